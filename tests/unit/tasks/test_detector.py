"""A saved detector scores new images exactly as the run that saved it."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import anomaly_vlm
from anomaly_vlm.deploy import DETECTOR_FORMAT, DetectorError
from anomaly_vlm.reporting.predictions import path_within_category
from anomaly_vlm.tasks import evaluate
from anomaly_vlm.tasks.runner import run

from .test_inputs import config, make_dataset

TINY = {
    "winclip": (1, ()),
    "aprillab": (1, ()),
    "anomalyclip": (0, ("method.layers=[8]", "prompts.deep_prompt_depth=4")),
    "adaclip": (0, ("method.blur_sigma=1.0",)),
    "faprompt": (0, ("prompts.deep_prompt_depth=4",)),
    "bayespfl": (0, ("method.sample_num=2", "method.blur_sigma=2.0")),
    # prompt learners are created per category: the detector must rebuild them before loading
    "promptad": (1, ("method.epochs=2", "method.progress=false")),
}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """method -> run folder of a test run with save_detector=true (made on first use)."""
    root = tmp_path_factory.mktemp("detector")
    data = make_dataset(root / "data")
    runs = {}

    def get(method):
        if method not in runs:
            shots, extra = TINY[method]
            out = root / method
            # 64 px (tiny CLIP): half the run's cost; the tests read the size from detector.image_size or
            # state it as 64 (a size other than the backbone file's 128, so a default cannot pass for it)
            overrides = ["data=folder", f"data.root={data}", "save_predictions=true", "save_detector=true"]
            overrides.append("backbone.image_size=64")
            run(config(out, *overrides, f"method={method}", f"shots={shots}", *extra), fit=False)
            runs[method] = out
        return runs[method]

    return get


@pytest.fixture(scope="module")
def widget(saved_run):
    """The saved WinCLIP+ detector of category widget, loaded once for the tests that only score with it."""
    return anomaly_vlm.Detector.load(saved_run("winclip") / "detectors" / "widget")


@pytest.mark.parametrize(
    "method",
    [
        "winclip",
        pytest.param("aprillab", marks=pytest.mark.slow),
        pytest.param("anomalyclip", marks=pytest.mark.slow),
        pytest.param("adaclip", marks=pytest.mark.slow),
        pytest.param("faprompt", marks=pytest.mark.slow),
        pytest.param("bayespfl", marks=pytest.mark.slow),
        pytest.param("promptad", marks=pytest.mark.slow),
    ],
)
def test_loaded_detector_reproduces_the_run(saved_run, method):
    out = saved_run(method)
    with (out / "predictions" / "scores.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] == "widget"]
    detector = anomaly_vlm.Detector.load(out / "detectors" / "widget")
    output = detector.predict([row["path"] for row in rows])
    expected = np.array([float(row["score"]) for row in rows])
    np.testing.assert_allclose(output.image_score.double().numpy(), expected, rtol=1e-6, atol=1e-6)
    maps = np.load(out / "predictions" / "widget" / "anomaly_maps.npz")
    for index, row in enumerate(rows):
        saved = maps[path_within_category(row["path"], "widget")]
        np.testing.assert_allclose(output.anomaly_map[index].numpy(), saved, atol=1e-5)
    thresholds = json.loads((out / "results.json").read_text())["decisions"]["thresholds"]["widget"]
    assert output.decision == ["defect" if s > thresholds["image"] else "ok" for s in expected]


def test_detector_refuses_other_weights_and_newer_formats(saved_run, tmp_path):
    folder = saved_run("winclip") / "detectors" / "widget"
    with pytest.raises(DetectorError, match="other weights"):
        anomaly_vlm.Detector.load(folder, backbone_overrides={"seed": 123})
    newer = tmp_path / "newer"
    newer.mkdir()
    meta = json.loads((folder / "detector.json").read_text())
    meta["format"] = DETECTOR_FORMAT + 1
    (newer / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match="newer than this anomaly_vlm reads"):
        anomaly_vlm.Detector.load(newer)
    with pytest.raises(DetectorError, match="not a detector folder"):
        anomaly_vlm.Detector.load(tmp_path)


def test_detector_accepts_an_image_tensor(saved_run):
    detector = anomaly_vlm.Detector.load(saved_run("winclip") / "detectors" / "gadget")
    output = detector.predict(torch.rand(2, 3, detector.image_size, detector.image_size))
    assert output.image_score.shape == (2,) and output.anomaly_map.shape[1:] == (64, 64)


def test_predict_with_a_detector_matches_the_run(saved_run, tmp_path):
    out = saved_run("winclip")
    with (out / "predictions" / "scores.csv").open() as handle:
        expected = {
            row["path"]: float(row["score"]) for row in csv.DictReader(handle) if row["category"] == "widget"
        }
    images = Path(next(iter(expected))).parents[1]  # .../widget/test
    pred = tmp_path / "pred"
    cfg = config(
        pred,
        "mode=predict",
        f"data.path={images}",
        f"detector={out / 'detectors' / 'widget'}",
        name="evaluate",
    )
    evaluate(cfg)
    with (pred / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["path"] for row in rows} == set(expected)
    thresholds = json.loads((out / "results.json").read_text())["decisions"]["thresholds"]["widget"]
    for row in rows:
        assert float(row["score"]) == pytest.approx(expected[row["path"]], abs=1e-6)
        assert row["decision"] == ("defect" if float(row["score"]) > thresholds["image"] else "ok")
        assert row["defect_area"] != ""
    assert len(list((pred / "masks").glob("*.png"))) == len(rows)


# ----- the Python API ------------------------------------------------------------------------------------
def test_no_images_give_empty_outputs(widget):
    detector = widget
    size = detector.image_size
    for nothing in ([], torch.empty(0, 3, size, size)):
        output = detector.predict(nothing)
        assert output.image_score.shape == (0,) and output.anomaly_map.shape == (0, size, size)
        assert output.decision == [] and output.defect_area == []
        assert output.masks.shape == (0, size, size) and output.masks.dtype == torch.bool


def test_masks_are_a_bool_tensor_like_the_scores_and_maps(widget):
    detector = widget
    output = detector.predict(torch.rand(2, 3, detector.image_size, detector.image_size))
    assert isinstance(output.masks, torch.Tensor) and output.masks.dtype == torch.bool
    assert torch.equal(output.masks, output.anomaly_map > detector.thresholds.pixel)


def test_one_path_is_one_image(saved_run, widget):
    with (saved_run("winclip") / "predictions" / "scores.csv").open() as handle:
        path = next(row["path"] for row in csv.DictReader(handle) if row["category"] == "widget")
    assert torch.equal(widget.predict(path).image_score, widget.predict([Path(path)]).image_score)


@pytest.mark.parametrize(
    ("shape", "dtype", "hint"),
    [
        ((2, 3, 32, 32), torch.float32, "resize them to 64x64 first"),
        ((3, 64, 64), torch.float32, "for one image pass images[None]"),
        ((2, 64, 64, 3), torch.float32, "channels last"),
        ((2, 3, 64, 64), torch.uint8, "got torch.uint8 values (e.g. images.float() / 255)"),
    ],
)
def test_a_tensor_the_detector_cannot_score_says_what_it_expects(widget, shape, dtype, hint):
    detector = widget
    with pytest.raises(DetectorError) as raised:
        detector.predict(torch.zeros(shape, dtype=dtype))
    message = str(raised.value)
    assert "[N, 3, 64, 64] in [0, 1]" in message and "64 = detector.image_size" in message
    assert hint in message and "data.image_size" not in message and "backbone.image_size" not in message


def test_compose_builds_the_run_config_in_a_fresh_interpreter(tmp_path):
    # Fresh: the schema must be registered by compose itself, and ``import anomaly_vlm`` stays light.
    code = (
        "import sys, anomaly_vlm\n"
        "assert 'hydra' not in sys.modules and 'torch' not in sys.modules\n"
        "cfg = anomaly_vlm.compose(['backbone=tiny', 'method=aprillab', 'shots=2'])\n"
        "print(cfg.shots, cfg.method._target_, cfg.backbone.image_size)\n"
        "print(anomaly_vlm.compose(['mode=predict'], config_name='evaluate').mode)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "anomaly_vlm.methods.aprillab.AprilGANModule", "128", "predict"]
    with pytest.raises(FileNotFoundError, match="no train.yaml in"):
        anomaly_vlm.compose([], config_dir=tmp_path)
