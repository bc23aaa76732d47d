"""Re-running a sweep: skip finished jobs, resume interrupted training from ``checkpoints/last.ckpt``.

A job is finished when its folder holds a complete ``results.json`` (see
:func:`anomaly_vlm.reporting.results.read_results`). Sweep and job folders are deterministic
(:mod:`anomaly_vlm.resolvers`), so the same command finds the same folders again.

Trainable jobs checkpoint every epoch into ``checkpoints/last.ckpt`` (trainable parameters, optimizer,
scheduler and loop state, random generator states and the training data's position; never the frozen
backbone), so a resumed training ends with the parameters of an uninterrupted one, bit for bit. After
training, ``checkpoints/trained.ckpt`` holds the final trainable parameters; a job killed while testing
reloads it instead of training again.

Jobs that would train identical parameters (the reference draws of a few-shot sweep) share them through
``<cache_dir>/trained/<fingerprint>.ckpt``: the first job trains, the others load (``reuse_trained``).
Jobs that run at the same time (SLURM array tasks, joblib workers) take a lock file beside it, so one
trains while the others wait and then load its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from anomaly_vlm.callbacks.random_state import RandomStateCheckpoint
from anomaly_vlm.reporting.results import RESULTS_FILE, read_results, run_git
from anomaly_vlm.runtime import in_multirun
from anomaly_vlm.tasks.errors import FinishedRunError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
TRAINED_CHECKPOINT = f"{CHECKPOINT_DIR}/trained.ckpt"


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


class LastCheckpoint(RandomStateCheckpoint):
    """Writes ``checkpoints/last.ckpt`` at the end of every training epoch, atomically.

    Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` only alongside a top-k checkpoint; this keeps
    exactly one file. The checkpoint holds what ``AnomalyMethod.on_save_checkpoint`` keeps (trainable
    parameters and metadata) plus everything that decides the rest of training, so ``fit(ckpt_path=...)``
    continues with the next epoch exactly as an uninterrupted run would:

    * optimizer, learning-rate scheduler and loop state (Lightning's own; it steps epoch-interval
      schedulers at the epoch's last batch, so before this file is written);
    * the random generator states of every process (:class:`RandomStateCheckpoint`);
    * the datamodule's training position (the next epoch of its sampler, which fixes the order, the
      mosaics and the synthesized defects: :meth:`AnomalyDataModule.state_dict`).
    """

    def __init__(self, output_dir: Path) -> None:
        super().__init__()
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

#: Config keys (dotted paths) that never change the trained parameters. Everything else in the config
#: counts, so a key added later is training-relevant until someone lists it here (a stale checkpoint
#: is never reused by mistake; at worst a training runs again). Every key of the shipped configs is
#: classified, here or in :data:`TRAINING_KEYS` (tests/unit/tasks/test_fingerprint.py checks it).
NOT_TRAINING_KEYS: tuple[str, ...] = (
    # what is evaluated, and how the results are reported
    "task_name",
    "mode",
    "shots",
    "reference_seed",
    "reference_draws",
    "data",  # the evaluated dataset; its class_names do count (see TRAINING_EXCEPTIONS)
    "ckpt_path",
    "detector",
    "threshold",  # decisions are fitted after training, on scores
    "metrics",
    "save_predictions",
    "save_heatmaps",
    "save_detector",
    "detector_set_dependence",
    "num_overlays",
    "overwrite",
    "reuse_trained",
    "reuse_backbone",
    "sweep_name",
    "names",
    "paths",
    "logger",
    "callbacks",
    "datamodule.batch_size",  # the test loader
    # the training data of an epoch is a function of (seed, epoch), wherever the loader runs
    "datamodule.num_workers",
    # corruptions of the test images only
    "datamodule.test_corruption",
    "datamodule.test_corruption_strength",
    "datamodule.test_corruption_seed",
    # which normal images are the test-time references (training never reads them)
    "datamodule.reference_draw",
    # how test images and references are resized and evaluated (the training loader always squashes)
    "datamodule.geometry",
    "datamodule.crop_multiple",
    "datamodule.evaluation_resolution",
    # a limit on input files refuses files; what is read within it trains the same parameters
    "train_data.max_image_pixels",
    "train_data.synthesis.max_image_pixels",
    # where the backbone's weights are read from, not which weights
    "backbone.cache_dir",
    "method.progress",  # a progress bar
    # exact (float32) cached features are the features; only a rounding dtype changes what is learned
    "feature_cache.enabled",
    "feature_cache.dir",
    "feature_cache.max_gb",
    # trainer keys that change where and how a run reports, not what it learns
    "trainer._target_",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.enable_checkpointing",
    "trainer.num_sanity_val_steps",
)
#: Config keys that do change the trained parameters (documentation of a decision: the fingerprint
#: counts every key not in :data:`NOT_TRAINING_KEYS`). A group listed whole counts with all its keys
#: except those excluded above; ``datamodule``, ``trainer`` and ``feature_cache`` mix both kinds, so
#: each of their keys is listed on one side.
TRAINING_KEYS: tuple[str, ...] = (
    "seed",  # initialisation, training order, mosaics, synthesized defects
    "backbone",
    "prompts",
    "method",
    "train_data",
    "datamodule._target_",
    "datamodule.image_size",
    "datamodule.train_split",
    "datamodule.train_batch_size",
    "datamodule.train_mosaic_probability",
    "datamodule.train_mosaic_tiles",
    "datamodule.seed",
    "feature_cache._target_",
    "feature_cache.dtype",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.precision",
    "trainer.max_epochs",
    "trainer.limit_train_batches",
    "trainer.sync_batchnorm",
    "trainer.use_distributed_sampler",
)
#: Keys below an excluded key that still count: the class names of the evaluated data enter the
#: prompts of training-time text features.
TRAINING_EXCEPTIONS: tuple[str, ...] = ("data.class_names",)


def code_identity() -> str:
    """The code that trains: commit plus a hash of uncommitted changes (so edits never reuse stale runs)."""
    commit = run_git("rev-parse", "HEAD")
    if commit is None:
        import anomaly_vlm

        return f"package-{anomaly_vlm.__version__}"
    diff = run_git("diff", "HEAD", "--", "anomaly_vlm") or ""
    commit = commit.strip()
    return f"{commit}-{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else commit


def training_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without :data:`NOT_TRAINING_KEYS`, plus :data:`TRAINING_EXCEPTIONS`.

    Excluded keys are never resolved (``paths.output_dir`` needs Hydra's runtime, for example).
    """
    kept = {f"kept:{key}": _plain(OmegaConf.select(cfg, key, default=None)) for key in TRAINING_EXCEPTIONS}
    return {**_without_excluded(cfg, ""), **kept}


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
    return value


def _without_excluded(node: DictConfig, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in node:
        dotted = f"{prefix}{key}"
        if dotted in NOT_TRAINING_KEYS:
            continue
        if OmegaConf.is_missing(node, key):
            out[key] = "???"
        elif OmegaConf.is_dict(node[key]) and any(
            excluded.startswith(f"{dotted}.") for excluded in NOT_TRAINING_KEYS
        ):
            out[key] = _without_excluded(node[key], f"{dotted}.")
        else:
            out[key] = _plain(node[key])
    return out


def training_fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that determines the trained parameters of a job: the whole config minus
    :data:`NOT_TRAINING_KEYS`, plus the code.

    Few-shot draws (``shots``, ``reference_seed``), the evaluated dataset and reporting options are left
    out: the jobs of ``method=aprillab shots=4 -m`` differ only in those and so train identical
    parameters (bit-identical on CPU), which is why they can share one training run.
    """
    parts = {"config": training_config(cfg), "code": code_identity()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def shared_trained_checkpoint(cfg: DictConfig) -> Path | None:
    """Where this job's trained parameters are shared (``<cache_dir>/trained/<fingerprint>.ckpt``).

    None when ``reuse_trained=false``.
    """
    if not cfg.reuse_trained:
        return None
    return Path(cfg.paths.cache_dir).expanduser() / TRAINED_CACHE_FOLDER / f"{training_fingerprint(cfg)}.ckpt"


def publish_trained_checkpoint(trained: Path, shared: Path) -> None:
    """Copy a job's trained checkpoint to the shared cache (atomic: readers never see half a file)."""
    shared.parent.mkdir(parents=True, exist_ok=True)
    temporary = shared.with_name(f".{shared.name}.{os.getpid()}.tmp")
    shutil.copyfile(trained, temporary)
    os.replace(temporary, shared)


@contextlib.contextmanager
def training_lock(shared: Path) -> Iterator[None]:
    """Hold ``<fingerprint>.lock`` beside the shared checkpoint while this job trains.

    Concurrent jobs with the same fingerprint would otherwise all train (none finds the shared file when
    it starts). A POSIX record lock (``lockf``) is used because it works on the network file systems
    clusters share (NFS) and the kernel drops it when the holder dies, so a cancelled job never leaves a
    stale lock: a waiting job then trains itself.
    """
    shared.parent.mkdir(parents=True, exist_ok=True)
    with open(shared.with_suffix(".lock"), "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("another job is training identical parameters; waiting for %s", shared)
            fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
