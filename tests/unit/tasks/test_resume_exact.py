"""A training job interrupted mid-epoch and run again equals one that was never interrupted, bit for bit.

APRIL-GAN on the tiny CLIP, trained on synthesized defects with mosaics, so the training order, the
mosaic draws and the synthesized defects (and the optimizer state) all have to continue where they
stopped. Each training step also draws from the global generators (as dropout would), so the restored
random states matter too.

What each restored piece of ``last.ckpt`` is checked by here (each was made a no-op in turn):

* trainable parameters, optimizer state (Adam's moments), loop state: the parameters differ;
* random generator states (``RandomStateCheckpoint``): the parameters differ, through the draws of
  :func:`_drawing_step` (APRIL-GAN itself draws nothing from them while training);
* the datamodule's training position: without workers it cannot matter, Lightning's ``set_epoch`` with
  the restored epoch comes before the loader's first item; with workers the loader asks for the first
  items before it, which the slow case checks;
* learning-rate scheduler state: APRIL-GAN has no scheduler, so there is none to restore.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.tasks import resume
from anomaly_vlm.tasks.runner import run

CONF = Path(__file__).resolve().parents[3] / "conf"
EPOCHS = 3
#: The first run dies at this (epoch, batch), after ``last.ckpt`` of the epoch before it was written.
KILL_AT = (1, 1)


class Killed(RuntimeError):
    """Stands in for ``kill -9``: nothing after it runs."""


def _drawing_step(training_step):
    """``training_step`` whose loss is scaled by draws from torch's, numpy's and Python's generators."""

    def step(self, batch, batch_idx):
        draw = torch.rand(()).item() + np.random.random() + random.random()
        return training_step(self, batch, batch_idx) * (1.0 + 0.1 * draw)

    return step


def _config(tmp_path: Path, name: str, workers: int):
    overrides = [
        "experiment=aprillab_synthetic",
        "logger=none",
        "backbone.image_size=64",  # bit-exactness does not depend on the size; 64 px quarters the compute
        "num_overlays=0",
        "threshold.method=f1",
        "reuse_trained=false",
        f"datamodule.num_workers={workers}",
        "data.categories=[disc]",
        "train_data.categories=[grass,nut]",
        "+data.num_train=1",
        "+data.num_test_good=2",
        "+data.num_test_per_defect=1",
        "+train_data.num_train=5",
        "+train_data.num_test_good=1",
        "+train_data.num_test_per_defect=1",
        "datamodule.train_split=train",  # normal images only: every defect is synthesized
        "train_data.synthesize_anomalies=true",
        "datamodule.train_mosaic_probability=0.5",
        "datamodule.train_batch_size=4",
        f"trainer.max_epochs={EPOCHS}",
        "+trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path / name}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def _trained(tmp_path: Path, name: str) -> tuple[dict, dict]:
    folder = tmp_path / name
    state = torch.load(folder / resume.TRAINED_CHECKPOINT, map_location="cpu", weights_only=True)
    return state["state_dict"], json.loads((folder / "results.json").read_text())["metrics"]


# With workers the loader asks for the resumed epoch's first items before Lightning's set_epoch.
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_killed_and_resumed_training_equals_an_uninterrupted_one(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(AprilGANModule, "training_step", _drawing_step(AprilGANModule.training_step))
    run(_config(tmp_path, "straight", workers), fit=True)

    training_step = AprilGANModule.training_step

    def dying_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == KILL_AT:
            raise Killed
        return training_step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(AprilGANModule, "training_step", dying_step)
        with pytest.raises(Killed):
            run(_config(tmp_path, "resumed", workers), fit=True)
    last = tmp_path / "resumed" / resume.LAST_CHECKPOINT
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == KILL_AT[0] - 1
    assert not (tmp_path / "resumed" / resume.TRAINED_CHECKPOINT).exists()
    # Whatever the interrupted process left in this one's random generators must not matter either.
    L.seed_everything(12345, verbose=False)
    run(_config(tmp_path, "resumed", workers), fit=True)

    straight, straight_metrics = _trained(tmp_path, "straight")
    resumed, resumed_metrics = _trained(tmp_path, "resumed")
    assert straight.keys() == resumed.keys() and straight
    different = [key for key in straight if not torch.equal(straight[key], resumed[key])]
    assert not different, f"parameters differ after resuming: {different}"
    assert resumed_metrics == straight_metrics
