"""A training callback that holds a job at the start of an epoch until a file exists (test double).

The SLURM resume test cancels a job at a known point instead of racing the training: the job announces
that it has reached ``epoch`` (``checkpoints/last.ckpt`` of the epoch before it is written, since the
checkpoint callback runs at the end of every epoch) by creating ``arrived``, then waits for ``release``.
The first submission never sees ``release`` and is cancelled while it waits; the test creates ``release``
before it resubmits, so the resumed job passes through. Added to a job with
``+callbacks.barrier._target_=epoch_barrier.EpochBarrier`` (importable through ``PYTHONPATH``).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class EpochBarrier(L.Callback):
    """Wait at the start of ``epoch`` until ``release`` exists (at most ``timeout_s`` seconds)."""

    def __init__(self, epoch: int, arrived: str, release: str, timeout_s: float = 600.0) -> None:
        self.epoch = int(epoch)
        self.arrived = Path(arrived)
        self.release = Path(release)
        self.timeout_s = float(timeout_s)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch or self.release.exists():
            return
        self.arrived.touch()
        deadline = time.monotonic() + self.timeout_s
        while not self.release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"epoch barrier: {self.release} did not appear in {self.timeout_s} s")
            time.sleep(0.1)
