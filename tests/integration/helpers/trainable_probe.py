"""A tiny trainable method for the sweep/resume tests (importable by subprocesses via PYTHONPATH).

The CLIP baseline with one trainable gain on its anomaly map, trained to push the mean image score of a
batch towards its anomalous fraction. A fault hook kills the process at the start of a chosen epoch of
the job whose seed is ``PROBE_KILL_SEED``, after ``checkpoints/last.ckpt`` of the previous epoch exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from anomaly_vlm.methods.clip import CLIPBaselineModule
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction


class TrainableProbe(CLIPBaselineModule):
    """Paper: none (test double of a trainable method)."""

    method_name = "trainable_probe"
    trains_on_auxiliary_data = True

    def __init__(self, *args, seed: int = 0, kill_epoch: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(()))
        self.job_seed = int(seed)
        self.kill_epoch = int(kill_epoch)

    def score(self, features: FrozenFeatures) -> Prediction:
        prediction = self.model.score(features)
        return Prediction(prediction.image_score, prediction.anomaly_map * self.gain)

    def on_fit_start(self) -> None:
        self.setup_category("object", None)

    def on_train_start(self) -> None:
        log = Path(self.trainer.default_root_dir) / "probe_fit_starts.txt"
        with log.open("a") as handle:
            handle.write(f"{self.trainer.current_epoch} {float(self.gain.detach()):.6f}\n")

    def on_train_epoch_start(self) -> None:
        if os.environ.get("PROBE_KILL_SEED") == str(self.job_seed) and self.current_epoch == self.kill_epoch:
            os._exit(17)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        with torch.no_grad():
            scores = self.model.score(self.frozen_features(batch.image)).image_score
        loss = (self.gain * scores.mean() - batch.label.float().mean()) ** 2
        self.log("train/loss", loss, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([self.gain], lr=0.5)
