"""``evaluate.py ckpt_path=<the authors' release file>``: tested without training, provenance in results.json,
wrong files stopped with one line before any image is scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from composed import compose_config
from PIL import Image

from anomaly_vlm.tasks.errors import USER_ERRORS, CheckpointError
from anomaly_vlm.tasks.runner import run
from anomaly_vlm.untrusted import sha256_file

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture
def folder_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(2):
        for folder in ("train/good", "test/good", "test/dent"):
            path = root / "widget" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(path)
        mask = np.zeros((24, 24), np.uint8)
        mask[4:12, 4:12] = 255
        path = root / "widget" / "ground_truth" / "dent" / f"{i}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path)
    return root


def _config(output_dir: Path, cache_dir: Path, *overrides: str):
    base = [
        "backbone=tiny",
        "logger=none",
        "trainer=cpu",
        "datamodule.num_workers=0",
        f"paths.output_dir={output_dir}",
        # The session's cache: the synthetic training data (checked before scoring) is generated once.
        f"paths.cache_dir={cache_dir}",
        "+trainer.enable_progress_bar=false",
        "method=aprillab",
        "train_data=synthetic",
    ]
    return compose_config("evaluate", [*base, *overrides])


def _release(path: Path, width: int = 64) -> Path:
    """APRIL-GAN's release layout for the tiny backbone (4 stages, width -> 64)."""
    torch.manual_seed(0)
    layer = {}
    for index in range(4):
        layer[f"fc.{index}.weight"] = torch.randn(64, width) * 0.1
        layer[f"fc.{index}.bias"] = torch.zeros(64)
    torch.save({"trainable_linearlayer": layer}, path)
    return path


def test_the_authors_weights_are_tested_and_recorded(tmp_path, folder_data, cache_dir):
    release = _release(tmp_path / "visa_pretrained.pth")
    out = tmp_path / "run"
    run(_config(out, cache_dir, "data=folder", f"data.root={folder_data}", f"ckpt_path={release}"), fit=False)
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint_origin"] == "official"
    assert results["trained_checkpoint"] == str(release)
    assert results["trained_checkpoint_sha256"] == sha256_file(release)
    assert results["untrained"] is False
    assert not (out / "checkpoints").exists()  # nothing was trained


def test_a_wrong_shape_stops_with_one_line(tmp_path, folder_data, cache_dir):
    release = _release(tmp_path / "vit_l.pth", width=1024)
    with pytest.raises(CheckpointError) as caught:
        run(
            _config(
                tmp_path / "run", cache_dir, "data=folder", f"data.root={folder_data}", f"ckpt_path={release}"
            ),
            fit=False,
        )
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, USER_ERRORS)
    assert "key 'trainable_linearlayer.fc.0.weight' has shape (64, 1024), this run needs (64, 64)" in message


def test_another_methods_release_is_named_before_weights_load(tmp_path, folder_data, cache_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built before the file was checked")

    monkeypatch.setattr("anomaly_vlm.backbones.FrozenCLIP.__init__", refuse)
    path = tmp_path / "epoch_15.pth"
    learner = {"ctx_pos": torch.zeros(1, 1, 12, 64), "ctx_neg": torch.zeros(1, 1, 12, 64)}
    learner.update({f"compound_prompts_text.{i}": torch.zeros(4, 64) for i in range(8)})
    torch.save({"prompt_learner": learner}, path)
    with pytest.raises(
        CheckpointError, match=r"release of AnomalyCLIP .*method=anomalyclip, not for method=aprillab"
    ):
        run(
            _config(
                tmp_path / "run", cache_dir, "data=folder", f"data.root={folder_data}", f"ckpt_path={path}"
            ),
            fit=False,
        )
