"""train(cfg) and evaluate(cfg): instantiate -> fit (if trainable) -> test every category -> results.

Categories are looped inside one job so CLIP is built once per job. Everything that can be checked
without touching the model (output folder, dataset layout, shots) is checked first, so a bad input
fails in seconds, before weights load.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_vlm.callbacks import EfficiencyProbe, EvaluationCallback
from anomaly_vlm.callbacks import wandb as wandb_helpers
from anomaly_vlm.callbacks.efficiency import flops_per_image
from anomaly_vlm.data import AnomalyDataModule, Sample
from anomaly_vlm.data.sampling import write_reference_log
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.reporting.console import print_metrics_table
from anomaly_vlm.reporting.results import RESULTS_FILE, build_results, write_json_atomic
from anomaly_vlm.tasks import ddp, resume

log = logging.getLogger(__name__)

NAMED_GROUPS = ("method", "backbone", "prompts", "data", "train_data")
TRAINED_CHECKPOINT = resume.TRAINED_CHECKPOINT
FinishedRunError = resume.FinishedRunError

# Lightning's advice to raise num_workers is noise for per-category loaders of small test sets.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def _quiet_lightning() -> None:
    """One line per Lightning message (Hydra's handler already prints them), no product adverts."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.propagate = True
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate`` that surfaces our own clear errors instead of Hydra's wrapped repr of them.

    Built objects are passed through a partial: Hydra would turn dataclass kwargs back into configs.
    """
    try:
        factory = instantiate(node, _partial_=True)
    except InstantiationException as error:
        raise (error.__cause__ or error) from None
    try:
        return factory(**kwargs)
    except InstantiationException as error:
        raise (error.__cause__ or error) from None


def group_choices(cfg: DictConfig) -> dict[str, str | None]:
    """Which file of each config group this job uses (method, backbone, ...)."""
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        return {group: choices.get(group) for group in NAMED_GROUPS}
    names = cfg.get("names") or {}
    return {group: names.get(group) for group in NAMED_GROUPS}


def guard_finished_run(output_dir: Path, overwrite: bool) -> dict | None:
    """Never replace a finished result unless asked to; in a multirun, return it so the job is skipped."""
    return resume.finished_result(output_dir, overwrite)


def build_logger(cfg: DictConfig, names: dict[str, str | None]) -> Any:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    if wandb_helpers.is_wandb_config(cfg.logger):
        return build(cfg.logger, **wandb_helpers.run_fields(cfg, names))
    return instantiate(cfg.logger)


def close_logger(logger: Any) -> None:
    """Finish W&B runs so each job of a multirun is its own run."""
    wandb_helpers.finish(logger)


def fit_or_resume(trainer: L.Trainer, method: AnomalyMethod, datamodule: Any, output_dir: Path) -> Path:
    """Train, resuming from ``checkpoints/last.ckpt`` when an earlier attempt was interrupted.

    A job whose training finished (``checkpoints/trained.ckpt``) but whose testing did not reloads the
    trained parameters instead of training again.
    """
    done = resume.trained_checkpoint(output_dir)
    if done is not None:
        log.info("training already finished; loading %s", done)
        method.load_trainable_checkpoint(str(done))
        return done
    last = resume.last_checkpoint(output_dir)
    if last is not None:
        log.info("resuming training from %s", last)
    trainer.fit(method, datamodule=datamodule, ckpt_path=str(last) if last else None)
    trained = output_dir / TRAINED_CHECKPOINT
    trainer.save_checkpoint(trained, weights_only=True)
    return trained


def draw_all_references(
    datamodule: AnomalyDataModule, categories: list[str], shots: int, seed: int
) -> dict[str, list[Sample]]:
    return {category: datamodule.reference_samples(category, shots, seed) for category in categories}


def run(cfg: DictConfig, fit: bool) -> float | None:
    """Run one job. Returns the mean image AUROC (the value sweepers optimise)."""
    started = time.time()
    _quiet_lightning()
    output_dir = Path(cfg.paths.output_dir)
    finished = guard_finished_run(output_dir, bool(cfg.get("overwrite", False)))
    if finished is not None:
        return (finished.get("metrics") or {}).get("mean", {}).get("image_auroc")
    names = group_choices(cfg)
    launch_environment = ddp.launch_environment()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    # Cheap checks first: data layout, categories, shots.
    source = build(cfg.data)
    train_source = build(cfg.train_data) if cfg.get("train_data") else None
    datamodule: AnomalyDataModule = build(cfg.datamodule, source=source, train_source=train_source)
    categories = datamodule.categories
    shots = int(cfg.shots)
    references = draw_all_references(datamodule, categories, shots, int(cfg.seed))
    if shots:
        write_reference_log(output_dir / "references.json", references, shots, int(cfg.seed))

    backbone = build(cfg.backbone)
    prompts = build(cfg.prompts)
    method: AnomalyMethod = build(
        cfg.method, backbone=backbone, prompts=prompts, shots=shots, text_cache_dir=cfg.paths.cache_dir
    )
    if cfg.get("ckpt_path"):
        method.load_trainable_checkpoint(str(cfg.ckpt_path))

    logger = build_logger(cfg, names)
    evaluator = Evaluator()
    num_overlays = max(int(cfg.get("num_overlays", 0)), wandb_helpers.heatmaps_wanted(logger))
    evaluation = EvaluationCallback(
        evaluator, output_dir, bool(cfg.get("save_predictions", False)), num_overlays
    )
    extra_callbacks = [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]
    will_fit = fit and method.is_trainable and not cfg.get("ckpt_path")
    if resume.in_multirun():
        ddp.relaunch_job_not_sweep()  # DDP ranks must re-run this job, not the whole sweep
    # Trainable jobs checkpoint every epoch so an interrupted sweep resumes them (tasks/resume.py).
    checkpointing = [resume.checkpoint_callback(output_dir)] if will_fit else []
    trainer: L.Trainer = build(
        cfg.trainer,
        logger=logger,
        callbacks=[evaluation, *extra_callbacks, *checkpointing],
    )
    if logger:
        logger.log_hyperparams({**names, **wandb_helpers.pivot_fields(cfg, names)})

    trained_checkpoint = fit_or_resume(trainer, method, datamodule, output_dir) if will_fit else None

    for category in categories:
        reference_images = datamodule.load_images(references[category]) if references[category] else None
        method.prepare_category(category, reference_images)
        trainer.test(method, dataloaders=datamodule.category_test_dataloader(category), verbose=False)

    mean = evaluator.macro_mean()
    probe = next((callback for callback in extra_callbacks if isinstance(callback, EfficiencyProbe)), None)
    if not trainer.is_global_zero:
        # DDP: rank 0 gathered every rank's predictions; it alone reports and writes results.json.
        close_logger(logger)
        ddp.teardown(launch_environment)
        return None
    efficiency = probe.summary(method) if probe else method.parameter_counts()
    efficiency["flops_per_image"] = flops_per_image(method, datamodule.image_size)
    if logger:
        logger.log_metrics({f"test/{name}": value for name, value in mean.items() if value is not None})
        logger.log_metrics(
            {f"efficiency/{k}": v for k, v in efficiency.items() if isinstance(v, int | float)}
        )
        wandb_helpers.log_results(logger, evaluator.results, mean, efficiency, output_dir)
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    payload = build_results(
        config=config,
        names=names,
        per_category=evaluator.results,
        mean=mean,
        efficiency=efficiency,
        seed=int(cfg.seed),
        shots=shots,
        started=started,
        extra={
            "trained_checkpoint": str(trained_checkpoint) if trained_checkpoint else None,
            "device": str(method.device),
        },
    )
    results_path = write_json_atomic(output_dir / RESULTS_FILE, payload)
    title = f"{names['method']} | {names['backbone']} | {names['data']} | shots={shots} | seed={cfg.seed}"
    print_metrics_table(evaluator.results, mean, title=title)
    print(f"results: {results_path}")
    close_logger(logger)
    ddp.teardown(launch_environment)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return mean.get("image_auroc")


def train(cfg: DictConfig) -> float | None:
    """Fit the method's trainable parameters (if any) on the auxiliary data, then test."""
    return run(cfg, fit=True)


def evaluate(cfg: DictConfig) -> float | None:
    """Test only; trained parameters come from ``ckpt_path``."""
    return run(cfg, fit=False)
