"""Re-running a sweep: skip finished jobs, resume interrupted training from ``checkpoints/last.ckpt``.

A job is finished when its folder holds a complete ``results.json`` (see
:func:`anomaly_vlm.reporting.results.read_results`). Sweep and job folders are deterministic
(:mod:`anomaly_vlm.resolvers`), so the same command finds the same folders again.

Trainable jobs checkpoint every epoch into ``checkpoints/last.ckpt`` (trainable parameters, optimizer
and loop state; never the frozen backbone). After training, ``checkpoints/trained.ckpt`` holds the
final trainable parameters; a job killed while testing reloads it instead of training again.

Jobs that would train identical parameters (the reference draws of a few-shot sweep) share them through
``<cache_dir>/trained/<fingerprint>.ckpt``: the first job trains, the others load (``reuse_trained``).
Parallel jobs (joblib, SLURM arrays) take a file lock on that checkpoint while they check for it and
train, so a second job waits for the first one's training and then loads it instead of training too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from anomaly_vlm.cache.locks import file_lock
from anomaly_vlm.reporting.results import RESULTS_FILE, read_results, run_git

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


# ----- trained parameters shared by the jobs of a sweep ----------------------------------------------
TRAINED_CACHE_FOLDER = "trained"
# Trainer keys that change where/how a run reports, not what it learns.
_REPORTING_TRAINER_KEYS = {
    "_target_",
    "default_root_dir",
    "logger",
    "callbacks",
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "enable_checkpointing",
    "num_sanity_val_steps",
}
_TRAINING_DATAMODULE_KEYS = ("image_size", "train_split", "train_batch_size", "train_mosaic_probability")


def code_identity() -> str:
    """The code that trains: commit plus a hash of uncommitted changes (so edits never reuse stale runs)."""
    commit = run_git("rev-parse", "HEAD")
    if commit is None:
        import anomaly_vlm

        return f"package-{anomaly_vlm.__version__}"
    diff = run_git("diff", "HEAD", "--", "anomaly_vlm") or ""
    commit = commit.strip()
    return f"{commit}-{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else commit


def training_fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that determines the trained parameters of a job.

    Few-shot draws (``shots``, ``reference_seed``), the evaluated dataset and reporting options are left
    out: the jobs of ``method=aprillab shots=4 -m`` differ only in those and so train identical
    parameters (bit-identical on CPU), which is why they can share one training run.
    """

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

    trainer = {key: plain(value) for key, value in cfg.trainer.items() if key not in _REPORTING_TRAINER_KEYS}
    parts = {
        "method": plain(cfg.method),
        "backbone": plain(cfg.backbone),
        "prompts": plain(cfg.prompts),
        "train_data": plain(cfg.get("train_data")),
        "class_names": plain((cfg.get("data") or {}).get("class_names")),
        "datamodule": {key: plain(cfg.datamodule.get(key)) for key in _TRAINING_DATAMODULE_KEYS},
        "trainer": trainer,
        "seed": int(cfg.seed),
        "code": code_identity(),
    }
    features = cfg.get("feature_cache") or {}
    if features.get("enabled", False) and features.get("dtype", "float32") != "float32":
        # Rounded cached features change what is learned; exact (float32) caching changes nothing.
        parts["feature_cache_dtype"] = str(features.get("dtype"))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def shared_trained_checkpoint(cfg: DictConfig) -> Path | None:
    """Where this job's trained parameters are shared (``<cache_dir>/trained/<fingerprint>.ckpt``).

    None when ``reuse_trained=false``.
    """
    if not cfg.get("reuse_trained", True):
        return None
    return Path(cfg.paths.cache_dir).expanduser() / TRAINED_CACHE_FOLDER / f"{training_fingerprint(cfg)}.ckpt"


def publish_trained_checkpoint(trained: Path, shared: Path) -> None:
    """Copy a job's trained checkpoint to the shared cache (atomic: readers never see half a file)."""
    shared.parent.mkdir(parents=True, exist_ok=True)
    temporary = shared.with_name(f".{shared.name}.{os.getpid()}.tmp")
    shutil.copyfile(trained, temporary)
    os.replace(temporary, shared)


@contextlib.contextmanager
def shared_training_lock(shared: Path | None, world_size: int = 1) -> Iterator[None]:
    """Hold the lock of a shared trained checkpoint while checking for it and training.

    A job that finds the lock taken waits: another job is training the identical parameters, and once
    it publishes them this job loads them. Not under DDP (``world_size > 1``): the ranks of one job must
    all take the same path through ``fit``, and one rank waiting on a lock the others skip would hang.
    """
    if shared is None or world_size > 1:
        yield
        return
    lock = shared.with_name(f".{shared.name}.lock")
    with file_lock(lock, blocking=False) as held:
        if held:
            yield
            return
    log.info("another job is training identical parameters; waiting for it (lock %s)", lock)
    with file_lock(lock):
        yield
