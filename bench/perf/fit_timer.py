"""A callback that records the wall time of ``fit`` and of each training epoch into a JSON file.

Used by ``python -m bench.perf cache`` through ``+callbacks.fit_timer._target_=bench.perf.fit_timer.FitTimer``
(``train.py`` runs from the repository root, where ``bench`` is importable), so the benchmark times training
alone, not model building or testing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class FitTimer(L.Callback):
    """Writes ``{"fit_s": ..., "epoch_s": [...]}`` to ``path`` when training ends."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.epochs: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self.epoch_started)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_s = time.perf_counter() - self.fit_started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"fit_s": fit_s, "epoch_s": self.epochs}))
