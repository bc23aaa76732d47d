"""Training a job's method, resuming an interrupted training, or reusing a finished one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.tasks import resume

log = logging.getLogger(__name__)


def fit_or_resume(
    trainer: L.Trainer, method: AnomalyMethod, datamodule: Any, output_dir: Path, shared: Path | None = None
) -> Path:
    """Train, resuming from ``checkpoints/last.ckpt`` when an earlier attempt was interrupted.

    A job whose training finished (``checkpoints/trained.ckpt``) but whose testing did not reloads the
    trained parameters instead of training again; so does a job whose identical training another job
    already did (``shared``, see :func:`resume.shared_trained_checkpoint`).
    Jobs running at the same time serialise on :func:`resume.training_lock`, so one of them trains and
    the others load its result. DDP jobs skip the lock: every rank would take it for itself and wait.
    """
    done = resume.trained_checkpoint(output_dir)
    if done is None and shared is not None and trainer.world_size == 1:
        with resume.training_lock(shared):
            return _fit_once(trainer, method, datamodule, output_dir, shared)
    return _fit_once(trainer, method, datamodule, output_dir, shared)


def _fit_once(
    trainer: L.Trainer, method: AnomalyMethod, datamodule: Any, output_dir: Path, shared: Path | None
) -> Path:
    done = resume.trained_checkpoint(output_dir)
    if done is None and shared is not None and shared.is_file():
        log.info("identical training already done by another job; loading %s", shared)
        done = shared
    if done is not None:
        log.info("training already finished; loading %s", done)
        method.load_trainable_checkpoint(str(done))
        return done
    last = resume.last_checkpoint(output_dir)
    if last is not None:
        log.info("resuming training from %s", last)
    # weights_only: a run folder can be handed over too, and its last.ckpt must not run code either.
    trainer.fit(method, datamodule=datamodule, ckpt_path=str(last) if last else None, weights_only=True)
    trained = output_dir / resume.TRAINED_CHECKPOINT
    trainer.save_checkpoint(trained, weights_only=True)
    if shared is not None and trainer.is_global_zero:
        resume.publish_trained_checkpoint(trained, shared)
    return trained
