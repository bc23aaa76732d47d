"""AnomalyDINO end to end on the tiny DINOv2: the per-category memory (rotation, masking of references),
the batched zero-shot mode as transductive, the compose-time backbone check, detectors and ONNX export."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from anomaly_vlm.backbones import FrozenDINOv2
from anomaly_vlm.data import AnomalyDataModule, DataError, Sample
from anomaly_vlm.data.image_io import resize_image
from anomaly_vlm.methods.anomalydino import AnomalyDINOModule, rotate_references
from anomaly_vlm.methods.anomalydino.torch_model import ROTATION_ANGLES
from anomaly_vlm.methods.catalog import method_info
from anomaly_vlm.methods.contract import NotExportableError, export_module
from anomaly_vlm.tasks.config_checks import check_config
from anomaly_vlm.tasks.errors import ConfigError
from anomaly_vlm.tasks.instantiate import build

CONF = Path(__file__).resolve().parents[4] / "conf"


@pytest.fixture(scope="module")
def backbone() -> FrozenDINOv2:
    return FrozenDINOv2("anomaly-vlm-tiny-dinov2", None, image_size=140, seed=0)


def _images(count: int, seed: int) -> torch.Tensor:
    return (
        torch.randint(0, 256, (count, 3, 140, 140), generator=torch.Generator().manual_seed(seed)) / 255
    ).float()


def test_memory_holds_the_rotated_references_where_the_table_says(backbone):
    references = _images(2, 0)
    rotated = AnomalyDINOModule(backbone, None, shots=2, dataset="MVTecAD")
    rotated.setup_category("bottle", references)  # agnostic: rotation, no masking
    assert rotated.model.memory.shape == (2 * 8 * 100, 64) and not rotated.model.masking
    turned = rotated.model.memory.view(16, 100, 64)
    torch.testing.assert_close(turned[:2], rotated.frozen_features(references)["patch_tokens"])
    plain = AnomalyDINOModule(backbone, None, shots=2, dataset="MVTecAD", preprocess="informed")
    plain.setup_category("bottle", references)
    assert plain.model.memory.shape == (2 * 100, 64)
    masked = AnomalyDINOModule(
        backbone, None, shots=2, dataset="MVTecAD", rotation=False, mask_references=True
    )
    masked.setup_category("capsule", references)
    assert masked.model.masking
    kept = masked.model.foreground(masked.frozen_features(references)["patch_tokens"], True).sum()
    assert masked.model.memory.shape[0] == int(kept)


def _write_references(folder: Path, sizes: list[tuple[int, int]]) -> list[Sample]:
    generator = np.random.default_rng(0)
    samples = []
    for index, (width, height) in enumerate(sizes):
        path = folder / f"{index:03d}.png"
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), "bottle", 0))
    return samples


def test_references_are_turned_at_their_files_resolution_then_resized(backbone, tmp_path):
    samples = _write_references(tmp_path, [(300, 300), (300, 300)])
    datamodule = AnomalyDataModule(SimpleNamespace(max_image_pixels=None), image_size=140)
    originals = datamodule.load_images(samples, file_resolution=True)
    loaded = datamodule.load_images(samples)
    assert originals.shape == (2, 3, 300, 300) and loaded.shape == (2, 3, 140, 140)
    # Resized as the loader resizes a file: the 0-degree copies are the loader's images, bit for bit.
    torch.testing.assert_close(torch.stack([resize_image(i, 140) for i in originals]), loaded, rtol=0, atol=0)
    method = AnomalyDINOModule(backbone, None, shots=2, dataset="MVTecAD")  # bottle: rotation, no masking
    assert method.references_at_file_resolution
    method.setup_category("bottle", originals)
    memory = method.model.memory.view(16, 100, 64)
    torch.testing.assert_close(memory[:2], method.frozen_features(loaded)["patch_tokens"])
    turned = rotate_references(originals, ROTATION_ANGLES[1:], size=140)  # turn at 300 px, then resize
    torch.testing.assert_close(memory[2:], method.frozen_features(turned)["patch_tokens"])
    # Turning the loader's 140 px images (rotate_before_resize=false) gives other references.
    after = AnomalyDINOModule(backbone, None, shots=2, dataset="MVTecAD", rotate_before_resize=False)
    assert not after.references_at_file_resolution
    after.setup_category("bottle", loaded)
    torch.testing.assert_close(after.model.memory.view(16, 100, 64)[:2], memory[:2])
    assert (after.model.memory.view(16, 100, 64)[2:] - memory[2:]).abs().max() > 1e-3
    assert not AnomalyDINOModule(backbone, None, shots=0).references_at_file_resolution


def test_references_of_different_sizes_are_one_error_line(tmp_path):
    samples = _write_references(tmp_path, [(300, 300), (300, 200)])
    datamodule = AnomalyDataModule(SimpleNamespace(max_image_pixels=None), image_size=140)
    assert datamodule.load_images(samples).shape == (2, 3, 140, 140)
    with pytest.raises(
        DataError,
        match=r"\(300x300\) and .*001.png \(300x200\) differ in size.*"
        r"method.rotate_before_resize=false",
    ):
        datamodule.load_images(samples, file_resolution=True)


def test_the_job_asks_for_the_references_at_the_files_resolution(backbone):
    from anomaly_vlm.tasks import categories

    asked = []

    class Data:
        categories = ["disc"]
        input_geometry = ("shorter_side", 14)

        def load_images(self, samples, file_resolution=False):
            asked.append(file_resolution)
            return torch.zeros(len(samples), 3, 4, 4)

        def category_test_dataloader(self, category):
            return None

        def input_digest(self, sample):
            return "digest"

    scoring = SimpleNamespace(begin=lambda *args: None)
    trainer = SimpleNamespace(callbacks=[scoring], test=lambda *args, **kwargs: None)
    references = {"disc": [Sample("a.png", "disc", 0)]}
    for rotate_before_resize in (True, False):
        method = AnomalyDINOModule(backbone, None, shots=1, rotate_before_resize=rotate_before_resize)
        categories.score_categories(trainer, method, Data(), scoring, references)
        # The references it resizes itself are resized as the loader resizes the test images.
        assert method.input_geometry == ("shorter_side", 14)
    assert asked == [True, False]


def test_zero_shot_is_the_transductive_batched_mode(backbone):
    method = AnomalyDINOModule(backbone, None, shots=0, dataset="SyntheticAD")
    assert method.transductive and method.model.memory.numel() == 0
    method.setup_category("disc", None)
    prediction = method.predict_images(_images(12, 1))
    assert prediction.anomaly_map.shape == (12, 140, 140) and torch.isfinite(prediction.image_score).all()
    with pytest.raises(NotExportableError, match="transductive"):
        method.export_module()
    few = AnomalyDINOModule(backbone, None, shots=1)
    assert (
        not few.transductive and method_info("anomalydino").few_shot and method_info("anomalydino").zero_shot
    )


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["data=synthetic", *overrides])


@pytest.mark.parametrize("method", ["winclip", "aprillab", "musc"])
def test_a_clip_method_on_dinov2_is_one_error_line_at_compose_time(method):
    names = {"method": method, "backbone": "dinov2_tiny", "data": "synthetic"}
    problems = check_config(_compose(f"method={method}", "backbone=dinov2_tiny"), names, fit=False)
    errors = [problem for problem in problems if "backbone=dinov2_tiny (DINOv2)" in str(problem)]
    assert len(errors) == 1 and isinstance(errors[0], ConfigError) and "\n" not in str(errors[0])
    assert str(errors[0]).startswith(f"method={method} needs ")


@pytest.mark.parametrize("backbone_name", ["dinov2_tiny", "tiny"])
def test_anomalydino_composes_on_both_families(backbone_name):
    cfg = _compose("experiment=anomalydino_synthetic", f"backbone={backbone_name}")
    names = {"method": "anomalydino", "backbone": backbone_name, "data": "synthetic"}
    assert check_config(cfg, names, fit=False) == []


def test_knn_is_faiss_by_default_and_checked_before_weights_load(monkeypatch):
    cfg = _compose("experiment=anomalydino_synthetic")
    names = {"method": "anomalydino", "backbone": "dinov2_tiny", "data": "synthetic"}
    assert cfg.method.knn == "faiss"
    [problem] = check_config(
        _compose("experiment=anomalydino_synthetic", "method.knn=annoy"), names, fit=False
    )
    assert str(problem) == "method.knn='annoy' is not one of ['faiss', 'torch']"
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss-cpu missing: one line before weights load
    [problem] = check_config(cfg, names, fit=False)
    assert str(problem).startswith("method.knn=faiss needs the faiss-cpu package") and "\n" not in str(
        problem
    )
    assert (
        check_config(_compose("experiment=anomalydino_synthetic", "method.knn=torch"), names, fit=False) == []
    )


def test_constructor_refuses_a_backbone_without_what_the_method_needs(backbone):
    from anomaly_vlm.methods.base import AnomalyMethod

    class TextMethod(AnomalyMethod):
        method_name = "text_method"

    holder = torch.nn.Module()
    holder.backbone = backbone
    with pytest.raises(ValueError, match="method=text_method needs a text tower"):
        TextMethod(holder, None)


def test_detector_and_onnx_export_match(tmp_path):
    pytest.importorskip("onnxruntime")
    from anomaly_vlm.deploy.detector import save_detector
    from anomaly_vlm.export import export_onnx

    cfg = _compose(
        "experiment=anomalydino_synthetic",
        "shots=1",
        "backbone.image_size=140",  # 10x10 patches: the same graph as at 280 px for a quarter of the compute
        f"paths.output_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}",
    )
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=1, text_cache_dir=None
    )
    size = method.backbone.image_size
    method.setup_category("disc", torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3)))
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    scored = method.predict_images(torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(4)))
    folder = save_detector(tmp_path / "det", method, "disc", config, None, "anomalydino", scored)
    result = export_onnx(folder)
    assert result.score_delta <= 1e-4 and result.map_delta <= 1e-4
    method.model.set_masking(True)
    with pytest.raises(NotExportableError, match="PCA"):
        export_module(method.model, "anomalydino")
