"""Re-running a sweep: skip finished jobs, resume interrupted training from ``checkpoints/last.ckpt``.

A job is finished when its folder holds a complete ``results.json`` (see
:func:`anomaly_vlm.reporting.results.read_results`). Sweep and job folders are deterministic
(:mod:`anomaly_vlm.resolvers`), so the same command finds the same folders again.

Trainable jobs checkpoint every epoch into ``checkpoints/last.ckpt`` (trainable parameters, optimizer
and loop state; never the frozen backbone). After training, ``checkpoints/trained.ckpt`` holds the
final trainable parameters; a job killed while testing reloads it instead of training again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from anomaly_vlm.reporting.results import RESULTS_FILE, read_results

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
TRAINED_CHECKPOINT = f"{CHECKPOINT_DIR}/trained.ckpt"


class FinishedRunError(FileExistsError):
    """The output folder already holds a finished results.json."""


def in_multirun() -> bool:
    """Whether this job is part of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finished_result(output_dir: Path, overwrite: bool) -> dict | None:
    """The stored result of a finished job that should be skipped, else None.

    In a multirun a finished job is skipped (that is what makes a re-run resume a sweep). A single run
    pointed at a finished folder stops instead of silently doing nothing.

    Raises:
        FinishedRunError: a single run's folder already holds a finished result and overwrite is off.
    """
    finished = Path(output_dir) / RESULTS_FILE
    payload = read_results(finished)
    if payload is None or overwrite:
        return None
    if in_multirun():
        log.info("skipping finished job: %s (overwrite=true recomputes it)", finished)
        return payload
    raise FinishedRunError(
        f"{finished} already holds a finished result; refusing to overwrite it. "
        "Choose another output folder or pass overwrite=true."
    )


class LastCheckpoint(L.Callback):
    """Writes ``checkpoints/last.ckpt`` at the end of every training epoch, atomically.

    Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` only alongside a top-k checkpoint; this keeps
    exactly one file. The checkpoint holds what ``AnomalyMethod.on_save_checkpoint`` keeps (trainable
    parameters and metadata) plus optimizer and loop state, so ``fit(ckpt_path=...)`` continues with the
    next epoch.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LAST_CHECKPOINT

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(temporary)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
        trainer.strategy.barrier("last_checkpoint")


def checkpoint_callback(output_dir: Path) -> LastCheckpoint:
    """The callback that keeps ``checkpoints/last.ckpt`` current during training."""
    return LastCheckpoint(output_dir)


def last_checkpoint(output_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of an interrupted training run, if any."""
    path = Path(output_dir) / LAST_CHECKPOINT
    return path if path.is_file() else None


def trained_checkpoint(output_dir: Path) -> Path | None:
    """``checkpoints/trained.ckpt`` of a training run that finished, if any."""
    path = Path(output_dir) / TRAINED_CHECKPOINT
    return path if path.is_file() else None
