"""The feature cache inside real runs: identical results, and a warm re-run never runs the image encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from composed import compose_config

from anomaly_vlm.tasks.runner import run


class EncoderPasses:
    """Counts images through any Conv2d (in these CLIPs only the image encoder's patch embedding is one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = torch.nn.Conv2d.forward

        def counted(module: torch.nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
            self.images += int(inputs.shape[0])
            return original(module, inputs)

        monkeypatch.setattr(torch.nn.Conv2d, "forward", counted)


def _run(tmp_path: Path, name: str, *overrides: str, features: str = "features") -> dict:
    out = tmp_path / name
    base = [
        "logger=none",
        "trainer=cpu",
        "num_overlays=0",
        "datamodule.num_workers=0",
        f"data.root={tmp_path / 'synthetic'}",
        f"paths.output_dir={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"feature_cache.dir={tmp_path / features}",
        "+trainer.enable_progress_bar=false",
    ]
    # compose_config: the runs of a test differ in values only, so they share one composition.
    cfg = compose_config("train", [*base, *overrides])
    run(cfg, fit=True)
    payload = json.loads((out / "results.json").read_text())
    trained = out / "checkpoints" / "trained.ckpt"
    state = (
        torch.load(trained, map_location="cpu", weights_only=True)["state_dict"] if trained.is_file() else {}
    )
    return {"metrics": payload["metrics"], "state": state, "payload": payload}


# 64 px and two prompts: the counts below depend on the images and epochs only, not on their size or the
# prompts, in a quarter of the pixels of the tiny backbone's 128 px.
APRILLAB = (
    "experiment=aprillab_synthetic",
    "backbone.image_size=64",
    "prompts=two_prompt",
    "shots=1",
    "reference_seed=0",
    "reuse_trained=false",
    "trainer.max_epochs=2",
    "data.categories=[disc]",
    "train_data.categories=[grass]",
    "+data.num_train=2",
    "+data.num_test_good=1",
    "+data.num_test_per_defect=1",
    "+train_data.num_train=1",
    "+train_data.num_test_good=2",
    "+train_data.num_test_per_defect=1",
    "train_data.root=${data.root}",
    # decisions from the test set itself: no held-out normal pass, so the counts below are the test path's
    "threshold.method=f1",
)


def test_trained_few_shot_job_cached_equals_uncached_and_warm_rerun_encodes_nothing(tmp_path, monkeypatch):
    passes = EncoderPasses(monkeypatch)
    uncached = _run(tmp_path, "uncached", *APRILLAB, "feature_cache.enabled=false")
    uncached_images = passes.images
    passes.images = 0
    cold = _run(tmp_path, "cold", *APRILLAB)
    cold_images = passes.images
    passes.images = 0
    warm = _run(tmp_path, "warm", *APRILLAB)

    assert warm["metrics"] == cold["metrics"] == uncached["metrics"]
    for state in (cold["state"], warm["state"]):
        assert state.keys() == uncached["state"].keys() and state
        assert all(torch.equal(state[key], uncached["state"][key]) for key in state)
    # 5 training images x 2 epochs + 1 reference + 4 test images, + 1 FLOPs probe without the cache;
    # with it each distinct image once (epoch 2 reads epoch 1's features) and the FLOPs figure is kept.
    assert uncached_images == 5 * 2 + 1 + 4 + 1
    assert cold_images == 5 + 1 + 4 + 1
    assert passes.images == 0
    stats = warm["payload"]["feature_cache"]
    assert stats["misses"] == 0 and stats["hits"] == 5 * 2 + 1 + 4


def test_mosaic_training_items_bypass_the_cache(tmp_path, monkeypatch):
    passes = EncoderPasses(monkeypatch)
    # One epoch: a mosaic the cold run had cached would be a hit in the warm run.
    mosaic = ("datamodule.train_mosaic_probability=1.0", "shots=0", "trainer.max_epochs=1")
    _run(tmp_path, "cold", *APRILLAB, *mosaic)
    passes.images = 0
    warm = _run(tmp_path, "warm", *APRILLAB, *mosaic)
    assert passes.images == 5  # every training item is a mosaic: encoded every time
    assert warm["payload"]["feature_cache"]["bypassed"] == 5


def test_winclip_few_shot_warm_rerun_encodes_nothing(tmp_path, monkeypatch):
    winclip = (
        "method=winclip",
        "backbone=tiny",
        "prompts=two_prompt",
        "backbone.image_size=64",
        "data=synthetic",
        "data.categories=[disc]",
        "shots=2",
        "+data.num_train=2",
        "+data.num_test_good=1",
        "+data.num_test_per_defect=1",
    )
    uncached = _run(tmp_path, "uncached", *winclip, "feature_cache.enabled=false")
    _run(tmp_path, "cold", *winclip)
    passes = EncoderPasses(monkeypatch)
    warm = _run(tmp_path, "warm", *winclip)
    assert passes.images == 0
    assert warm["metrics"] == uncached["metrics"]
