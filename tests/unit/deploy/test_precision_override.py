"""A saved detector runs in another backbone precision than it was saved in: precision is not the weights'
identity. Its weights are checked as saved, other weights are still refused, and the precision that ran is
recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from composed import CONF
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image
from scipy.stats import spearmanr

from anomaly_vlm.deploy import Detector, DetectorError
from anomaly_vlm.serve.registry import load_detectors
from anomaly_vlm.serve.settings import UsageError, parse
from anomaly_vlm.tasks import evaluate

from ..serve.conftest import SIZE, TWO, make_detector


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """``fp32``: a 2-shot APRIL-GAN detector (float32 adapters) saved in fp32; ``amp``: a zero-shot CLIP
    detector saved in amp-bf16."""
    root = tmp_path_factory.mktemp("precision")
    return {
        "fp32": make_detector(root / "fp32", "aprillab", 2, *TWO),
        "amp": make_detector(root / "amp", "clip", 0, *TWO, "backbone.precision=amp-bf16"),
    }


def _images() -> torch.Tensor:
    return torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


def test_an_fp32_detector_runs_in_a_low_precision_on_the_same_checked_weights(saved):
    reference = Detector.load(saved["fp32"])
    assert reference.precision["resolved"] == "fp32"
    expected = reference.score(_images())
    for mode in ("amp-bf16", "bf16"):
        detector = Detector.load(saved["fp32"], precision=mode)
        backbone = detector.method.backbone
        assert backbone.precision == mode and detector.config.backbone.precision == mode
        assert detector.precision["resolved"] == mode
        assert backbone.blocks[0].attn.in_proj_weight.dtype == torch.bfloat16
        assert detector.meta["backbone"]["digest"] == reference.meta["backbone"]["digest"]
        got = detector.score(_images())
        assert not torch.equal(got.anomaly_map, expected.anomaly_map)  # bf16 did run
        rho = spearmanr(got.anomaly_map.flatten().numpy(), expected.anomaly_map.flatten().numpy()).statistic
        assert rho > 0.95
    via_overrides = Detector.load(saved["fp32"], backbone_overrides={"precision": "amp-bf16"})
    assert via_overrides.precision["resolved"] == "amp-bf16"


def test_other_weights_are_refused_in_any_precision(saved):
    with pytest.raises(DetectorError, match="other weights"):
        Detector.load(saved["fp32"], backbone_overrides={"seed": 123}, precision="amp-bf16")
    with pytest.raises(DetectorError, match="other weights"):
        Detector.load(saved["fp32"], backbone_overrides={"seed": 123, "precision": "bf16"})


def test_a_detector_saved_in_a_low_precision_runs_in_that_one_only(saved):
    assert Detector.load(saved["amp"]).precision["resolved"] == "amp-bf16"
    assert Detector.load(saved["amp"], precision="amp-bf16").precision["resolved"] == "amp-bf16"
    with pytest.raises(DetectorError, match="saved with backbone.precision=amp-bf16"):
        Detector.load(saved["amp"], precision="fp32")
    with pytest.raises(DetectorError, match="backbone.precision='half' is not one of"):
        Detector.load(saved["fp32"], precision="half")


def test_predict_runs_a_detector_in_the_precision_given_on_the_command_line(saved, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(_images()[:2]):
        pixels = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    results = {}
    for precision in (None, "amp-bf16"):
        out = tmp_path / f"out-{precision}"
        overrides = ["mode=predict", f"data.path={folder}", f"detector={saved['fp32']}", "logger=none"]
        overrides += ["trainer=cpu", f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}"]
        overrides += [] if precision is None else [f"backbone.precision={precision}"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
        # As a Hydra main: the overrides of the command line are Hydra's, the job's config has no hydra node.
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            evaluate(cfg)
        finally:
            HydraConfig.instance().cfg = None
        results[precision] = json.loads((out / "predict.json").read_text())["precision"]
    assert results[None]["resolved"] == "fp32"
    assert results["amp-bf16"]["resolved"] == "amp-bf16"


def test_served_detectors_sharing_a_backbone_run_in_the_services_precision(saved, tmp_path):
    # Two detectors of one backbone: the module's fp32 detector and a copy of it under another name.
    folders = {"a": saved["fp32"]}
    folders["b"] = Path(shutil.copytree(folders["a"], tmp_path / "b" / folders["a"].name))
    served = load_detectors(folders, precision="amp-bf16")
    assert served["a"].detector.method.backbone is served["b"].detector.method.backbone
    for detector in served.values():
        assert detector.describe()["precision"]["resolved"] == "amp-bf16"
        assert detector.detector.method.backbone.precision == "amp-bf16"
    assert parse([f"detector={folders['a']}", "precision=bf16"]).precision == "bf16"
    assert parse([f"detector={folders['a']}", "precision=null"]).precision is None
    with pytest.raises(UsageError, match="precision=bf16 is a setting of runtime=torch"):
        parse([f"detector={folders['a']}", "runtime=onnx", "precision=bf16"])
