"""AA-CLIP as a saved detector and an ONNX graph: the adapters, the grid blur and the frozen set step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_vlm.deploy import Detector
from anomaly_vlm.deploy.detector import save_detector
from anomaly_vlm.tasks.instantiate import build

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from anomaly_vlm.export import export_onnx  # noqa: E402

CONF = Path(__file__).resolve().parents[4] / "conf"


def test_detector_and_onnx_graph_score_like_the_run(tmp_path: Path) -> None:
    overrides = ["backbone=tiny", "backbone.image_size=64", "method=aaclip", "prompts=two_prompt"]
    overrides += [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=0, text_cache_dir=None
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    method.setup_category("widget", None)
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    scored = method.predict_images(images)
    run_scores = method.postprocess_set(scored)
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    folder = save_detector(
        tmp_path / "detector", method, "widget", config, None, "aaclip", scored, set_dependence="refuse"
    )
    detector = Detector.load(folder)
    alone = detector.predict(images[:1])  # one image, scored with the run's frozen set statistics
    torch.testing.assert_close(alone.image_score, run_scores.image_score[:1], atol=1e-5, rtol=1e-5)
    result = export_onnx(folder)
    assert result.score_delta <= 1e-4 and result.map_delta <= 1e-4
