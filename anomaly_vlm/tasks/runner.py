"""train(cfg) and evaluate(cfg): one job = set up -> fit (if trainable) -> test every category -> results.

Categories are looped inside one job so CLIP is built once per job. A :class:`Job` owns what must be
released whatever happens (the logger, the DDP launch environment, the DDP relaunch patch): its
``close`` runs on success and on error alike.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_vlm import compat
from anomaly_vlm.callbacks import CategoryEvaluation, CategoryScoring, EfficiencyProbe
from anomaly_vlm.callbacks.efficiency import flops_per_image
from anomaly_vlm.decisions import ThresholdSettings
from anomaly_vlm.decisions.consumers import CategoryDecisions
from anomaly_vlm.deploy.detector import DetectorSaver
from anomaly_vlm.loggers import wandb as wandb_helpers
from anomaly_vlm.methods.contract import declares_set_statistics
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.reporting.console import print_metrics_table
from anomaly_vlm.reporting.results import RESULTS_FILE, build_results, write_json_atomic
from anomaly_vlm.runtime import in_multirun
from anomaly_vlm.tasks import ddp, resume
from anomaly_vlm.tasks.categories import score_categories
from anomaly_vlm.tasks.config_checks import check_config, raise_first
from anomaly_vlm.tasks.construction import (
    PreparedJob,
    build_datamodule,
    build_logger,
    feature_cache_report,
    group_choices,
    prepare_job,
    print_feature_cache_summary,
    quiet_lightning,
)
from anomaly_vlm.tasks.errors import report_user_errors
from anomaly_vlm.tasks.heldout import heldout_thresholds
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.outputs import OVERLAY_DIR, guard_finished_run, is_repeated_zero_shot_draw
from anomaly_vlm.tasks.predict import predict
from anomaly_vlm.tasks.training import fit_or_resume
from anomaly_vlm.tasks.training_data import use_protocol_training_data
from anomaly_vlm.untrusted import sha256_file

log = logging.getLogger(__name__)


class Job:
    """One train/evaluate job. Use as a context manager: leaving it always closes the logger, ends
    the DDP process group, restores the launch environment and undoes the DDP relaunch patch.

    Args:
        cfg: the composed job config.
        fit: train the method's trainable parameters (``train``) or only test (``evaluate``).
    """

    def __init__(self, cfg: DictConfig, fit: bool) -> None:
        self.cfg = cfg
        self.fit = fit
        self.started = time.time()
        self.output_dir = Path(cfg.paths.output_dir)
        self.names = group_choices(cfg)
        self.logger: Any = False
        self._cleanup = contextlib.ExitStack()

    def __enter__(self) -> Job:
        self._cleanup.callback(ddp.teardown, ddp.launch_environment())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        wandb_helpers.finish(self.logger)
        self._cleanup.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self) -> float | None:
        """Check, set up, fit, test; rank 0 writes ``results.json``. Returns the mean image AUROC."""
        use_protocol_training_data(self.cfg, self.names, self.fit)
        raise_first(check_config(self.cfg, self.names, self.fit))  # before any data or weights load
        L.seed_everything(int(self.cfg.seed), workers=True, verbose=False)
        datamodule, sources = build_datamodule(self.cfg, self.names)
        self.decisions = CategoryDecisions(ThresholdSettings.from_config(self.cfg.threshold))
        prepared = prepare_job(self.cfg, datamodule, sources, self.output_dir, self.names["method"], self.fit)
        self.logger = build_logger(self.cfg, self.names)
        # The evaluation path hands it whole categories on rank 0 (after set-level post-processing).
        evaluator = Evaluator(aupro=self.cfg.metrics.aupro)
        trainer, scoring, extra_callbacks = self._trainer(prepared, evaluator)
        fit_started = time.perf_counter()
        trained = self._fit(trainer, prepared.method, datamodule)
        fit_seconds = time.perf_counter() - fit_started
        if self.untrained(prepared.method):
            # Nothing was trained or loaded: the results must not claim the configured training set, or
            # tables would label them "trained on ..." next to (or instead of) the trained run.
            self.names["train_data"] = None
        if self.decisions.settings.method == "normal_fpr":
            model = getattr(prepared.method, "model", None)
            freezable = declares_set_statistics(model)  # thresholds chosen again on the test set's scale
            if prepared.method.transductive or (
                prepared.shots and hasattr(model, "postprocess_set") and not freezable
            ):
                # Scores normalised over the scored set: the held-out set has its own scale.
                self.decisions.caveat = (
                    "image scores are normalised over the scored set; held-out thresholds transfer "
                    "only approximately"
                )
                log.warning("threshold.method=normal_fpr: %s", self.decisions.caveat)
            self.decisions.thresholds = heldout_thresholds(
                functools.partial(build, self.cfg.trainer, logger=False),
                prepared.method,
                datamodule,
                prepared.references,
                self.decisions.settings,
            )
        score_categories(trainer, prepared.method, datamodule, scoring, prepared.references)
        if not trainer.is_global_zero:
            return None  # DDP: rank 0 gathered every rank's predictions; it alone reports
        probe = next((c for c in extra_callbacks if isinstance(c, EfficiencyProbe)), None)
        efficiency = probe.summary(prepared.method) if probe else prepared.method.parameter_counts()
        efficiency["flops_per_image"] = flops_per_image(
            prepared.method, datamodule.image_size, prepared.method.feature_cache
        )
        # Wall time of the training step of this job (a resumed or shared training counts what ran here);
        # None where nothing was trained here (training-free, or parameters loaded from ckpt_path).
        trained_here = self.will_fit and prepared.method.is_trainable and not self.cfg.ckpt_path
        efficiency["train_seconds"] = round(fit_seconds, 3) if trained_here else None
        return self._report(prepared, evaluator, efficiency, trained)

    @property
    def will_fit(self) -> bool:
        return self.fit and not self.cfg.ckpt_path

    def untrained(self, method: Any) -> bool:
        """A trainable method that was neither trained here nor loaded from ``ckpt_path``."""
        return method.is_trainable and not self.will_fit and not self.cfg.ckpt_path

    def _trainer(
        self, prepared: PreparedJob, evaluator: Evaluator
    ) -> tuple[L.Trainer, CategoryScoring, list]:
        """The trainer with the evaluation path, the configured callbacks and (if training) checkpoints."""
        cfg = self.cfg
        num_overlays = max(cfg.num_overlays, wandb_helpers.heatmaps_wanted(self.logger))
        evaluation = CategoryEvaluation(evaluator, self.output_dir, cfg.save_predictions, num_overlays)
        consumers: list = [evaluation, self.decisions]
        if cfg.save_detector:
            run_config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            consumers.append(DetectorSaver(self.output_dir, run_config, self.decisions, self.names["method"]))
        scoring = CategoryScoring(consumers)
        extra_callbacks = [instantiate(spec) for spec in (cfg.callbacks or {}).values() if spec]
        if in_multirun():
            # DDP ranks must re-run this job, not the whole sweep (undone when the job closes).
            self._cleanup.enter_context(compat.lightning_ddp_relaunch(ddp.job_command))
        # Trainable jobs checkpoint every epoch so an interrupted sweep resumes them (tasks/resume.py).
        trains = self.will_fit and prepared.method.is_trainable
        checkpointing = [resume.checkpoint_callback(self.output_dir)] if trains else []
        callbacks = [scoring, *extra_callbacks, *checkpointing]
        trainer: L.Trainer = build(cfg.trainer, logger=self.logger, callbacks=callbacks)
        if self.logger:
            fields = {**self.names, **wandb_helpers.pivot_fields(cfg, self.names)}
            self.logger.log_hyperparams({**fields, "reference_seed": prepared.reference_seed})
        return trainer, scoring, extra_callbacks

    def _fit(self, trainer: L.Trainer, method: Any, datamodule: Any) -> Path | str | None:
        """Train (or resume, or reuse a shared training); the trained parameters' file, if any."""
        if method.is_trainable and self.cfg.ckpt_path:
            return str(self.cfg.ckpt_path)
        if not (self.will_fit and method.is_trainable):
            return None
        method.run_config = OmegaConf.to_container(self.cfg, resolve=True, throw_on_missing=False)
        shared = resume.shared_trained_checkpoint(self.cfg)
        return fit_or_resume(trainer, method, datamodule, self.output_dir, shared)

    def _report(
        self, prepared: PreparedJob, evaluator: Evaluator, efficiency: dict, trained: Path | None
    ) -> Any:
        """Log the job's figures, write ``results.json`` and print the per-category table."""
        mean, shots = evaluator.macro_mean(), prepared.shots
        if self.logger:
            self.logger.log_metrics(
                {f"test/{name}": value for name, value in mean.items() if value is not None}
            )
            numbers = {f"efficiency/{k}": v for k, v in efficiency.items() if isinstance(v, int | float)}
            self.logger.log_metrics(numbers)
            wandb_helpers.log_results(self.logger, evaluator.results, mean, efficiency, self.output_dir)
            # File loggers (CSV) buffer rows until the trainer saves them; these came after it finished.
            self.logger.save()
            if not self.cfg.num_overlays:
                # Written only for the W&B panels (uploaded above); num_overlays=0 keeps the run folder free.
                shutil.rmtree(self.output_dir / OVERLAY_DIR, ignore_errors=True)
        payload = build_results(
            config=OmegaConf.to_container(self.cfg, resolve=True, throw_on_missing=False),
            names=self.names,
            per_category=evaluator.results,
            mean=mean,
            efficiency=efficiency,
            seed=int(self.cfg.seed),
            shots=shots,
            started=self.started,
            extra={
                "aupro": evaluator.aupro,
                "trained_checkpoint": str(trained) if trained else None,
                **checkpoint_provenance(prepared.method, trained),
                "untrained": bool(self.untrained(prepared.method)),
                # Scored each test image against the other test images of its category (e.g. MuSc).
                "transductive": bool(prepared.method.transductive),
                # False for a method that reads no prompt set (MuSc): tables show none for it.
                "uses_prompts": bool(getattr(prepared.method, "uses_prompts", True)),
                "device": str(prepared.method.device),
                # What backbone.precision asked for, what ran and why (auto resolves per machine).
                "precision": precision_record(prepared.method),
                "reference_seed": prepared.reference_seed if shots else None,
                "decisions": self.decisions.summary(),
                "feature_cache": feature_cache_report(prepared.method),
            },
        )
        results_path = write_json_atomic(self.output_dir / RESULTS_FILE, payload)
        wandb_helpers.finish(self.logger)  # before the table: W&B prints its own summary when a run finishes
        names = self.names
        title = f"{names['method']} | {names['backbone']} | {names['data']} | shots={shots}"
        title += f" | seed={self.cfg.seed}"
        if shots:
            title += f" | reference_seed={prepared.reference_seed}"
        if prepared.method.transductive:
            title += " | transductive (test images scored against each other)"
        print_metrics_table(evaluator.results, mean, title=title)
        print(f"results: {results_path}")
        print_feature_cache_summary(prepared.method)
        return mean.get("image_auroc")


def checkpoint_provenance(method: Any, trained: Path | str | None) -> dict[str, str | None]:
    """Where the tested trained parameters came from, for ``results.json``.

    ``checkpoint_origin``: ``"official"`` for the authors' release file loaded with ``ckpt_path``
    (tables label such rows "authors' weights"), ``"project"`` for parameters trained by this project
    (here or in an earlier run), None without trained parameters. ``trained_checkpoint_sha256``: the
    SHA-256 of that file.
    """
    if not trained:
        return {"checkpoint_origin": None, "trained_checkpoint_sha256": None}
    digest = getattr(method, "checkpoint_sha256", None)
    if digest is None and Path(trained).is_file():
        digest = sha256_file(trained)
    return {
        "checkpoint_origin": getattr(method, "checkpoint_origin", None) or "project",
        "trained_checkpoint_sha256": digest,
    }


def precision_record(method: Any) -> dict[str, str] | None:
    """The backbone's ``precision_record()`` (None for a backbone without precisions)."""
    record = getattr(getattr(method, "backbone", None), "precision_record", None)
    return record() if callable(record) else None


def skip_reason(cfg: DictConfig) -> tuple[bool, float | None]:
    """Whether this job must not run, and the value to return for it (a finished job's AUROC)."""
    if is_repeated_zero_shot_draw(cfg):
        log.warning(
            "shots=0 uses no reference images: the job with reference_seed=%s would repeat the one with "
            "reference_seed=0 and is skipped",
            cfg.reference_seed,
        )
        return True, None
    finished = guard_finished_run(Path(cfg.paths.output_dir), cfg.overwrite, bool(cfg.save_predictions))
    if finished is not None:
        return True, (finished.get("metrics") or {}).get("mean", {}).get("image_auroc")
    return False, None


def run(cfg: DictConfig, fit: bool) -> float | None:
    """Run one job. Returns the mean image AUROC (the value sweepers optimise)."""
    quiet_lightning()
    skip, value = skip_reason(cfg)
    if skip:
        discard_untouched_job_folder(cfg, log_may_hold_lines=True)  # a repeated zero-shot draw's folder
        return value
    try:
        with Job(cfg, fit) as job:
            return job.run()
    except BaseException:
        discard_untouched_job_folder(cfg, log_may_hold_lines=False)
        raise


#: Set (to anything but 0) in the processes of the ranks other than the first of a distributed job.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def discard_untouched_job_folder(cfg: DictConfig, log_may_hold_lines: bool) -> None:
    """In a multirun, remove the folder Hydra made for this job when the job wrote nothing into it
    (skipped, or failed before writing anything); a failed job's log with lines in it is kept."""
    import os

    from hydra.core.hydra_config import HydraConfig

    from anomaly_vlm.resolvers import remove_untouched_job_folder

    if not in_multirun() or any(os.environ.get(name, "0") != "0" for name in _RANK_VARIABLES):
        return
    log_name = f"{HydraConfig.get().job.name}.log"
    remove_untouched_job_folder(Path(cfg.paths.output_dir), log_name, log_may_hold_lines)


@report_user_errors
def train(cfg: DictConfig) -> float | None:
    """Fit the method's trainable parameters (if any) on the auxiliary data, then test."""
    return run(cfg, fit=True)


@report_user_errors
def evaluate(cfg: DictConfig) -> float | None:
    """Test only; trained parameters come from ``ckpt_path``. ``mode=predict`` scores unlabelled images."""
    if cfg.get("mode") == "predict":
        predict(cfg)
        return None
    return run(cfg, fit=False)
