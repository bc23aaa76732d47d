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
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_vlm.callbacks import EfficiencyProbe, EvaluationCallback
from anomaly_vlm.data import AnomalyDataModule, Sample
from anomaly_vlm.data.sampling import write_reference_log
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.reporting.console import print_metrics_table
from anomaly_vlm.reporting.results import RESULTS_FILE, build_results, read_results, write_json_atomic

log = logging.getLogger(__name__)

NAMED_GROUPS = ("method", "backbone", "prompts", "data", "train_data")
TRAINED_CHECKPOINT = "checkpoints/trained.ckpt"

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


class FinishedRunError(FileExistsError):
    """The output folder already holds a finished results.json."""


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


def guard_finished_run(output_dir: Path, overwrite: bool) -> None:
    """Never replace a finished result unless asked to."""
    finished = output_dir / RESULTS_FILE
    if read_results(finished) is not None and not overwrite:
        raise FinishedRunError(
            f"{finished} already holds a finished result; refusing to overwrite it. "
            "Choose another output folder or pass overwrite=true."
        )


def build_logger(cfg: DictConfig) -> Any:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    return instantiate(cfg.logger)


def close_logger(logger: Any) -> None:
    """Finish W&B runs so each job of a multirun is its own run."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        wandb.finish()


def draw_all_references(
    datamodule: AnomalyDataModule, categories: list[str], shots: int, seed: int
) -> dict[str, list[Sample]]:
    return {category: datamodule.reference_samples(category, shots, seed) for category in categories}


def is_repeated_zero_shot_draw(cfg: DictConfig) -> bool:
    """Whether this multirun job would repeat another one: a zero-shot job uses no references, so of
    the reference draws a method sweeps by default (``reference_seed`` = 0 .. ``reference_draws`` - 1)
    only the first one runs."""
    if int(cfg.get("shots", 0)) != 0 or not HydraConfig.initialized():
        return False
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    draws = int(cfg.get("reference_draws") or 1)
    return 0 < int(cfg.get("reference_seed", 0)) < draws


def run(cfg: DictConfig, fit: bool) -> float | None:
    """Run one job. Returns the mean image AUROC (the value sweepers optimise)."""
    started = time.time()
    _quiet_lightning()
    if is_repeated_zero_shot_draw(cfg):
        log.warning(
            "shots=0 uses no reference images: the job with reference_seed=%s would repeat the one with "
            "reference_seed=0 and is skipped",
            cfg.reference_seed,
        )
        return None
    output_dir = Path(cfg.paths.output_dir)
    guard_finished_run(output_dir, bool(cfg.get("overwrite", False)))
    names = group_choices(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    # Cheap checks first: data layout, categories, shots.
    source = build(cfg.data)
    train_source = build(cfg.train_data) if cfg.get("train_data") else None
    datamodule: AnomalyDataModule = build(cfg.datamodule, source=source, train_source=train_source)
    categories = datamodule.categories
    shots = int(cfg.shots)
    reference_seed = int(cfg.get("reference_seed", cfg.seed))
    references = draw_all_references(datamodule, categories, shots, reference_seed)
    if shots:
        write_reference_log(output_dir / "references.json", references, shots, reference_seed)

    backbone = build(cfg.backbone)
    prompts = build(cfg.prompts)
    method: AnomalyMethod = build(
        cfg.method, backbone=backbone, prompts=prompts, shots=shots, text_cache_dir=cfg.paths.cache_dir
    )
    if cfg.get("ckpt_path"):
        method.load_trainable_checkpoint(str(cfg.ckpt_path))

    logger = build_logger(cfg)
    evaluator = Evaluator()
    evaluation = EvaluationCallback(
        evaluator, output_dir, bool(cfg.get("save_predictions", False)), int(cfg.get("num_overlays", 0))
    )
    extra_callbacks = [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]
    trainer: L.Trainer = build(cfg.trainer, logger=logger, callbacks=[evaluation, *extra_callbacks])
    if logger:
        logger.log_hyperparams(
            {**names, "shots": shots, "seed": int(cfg.seed), "reference_seed": reference_seed}
        )

    trained_checkpoint = None
    if fit and method.is_trainable and not cfg.get("ckpt_path"):
        trainer.fit(method, datamodule=datamodule)
        trained_checkpoint = output_dir / TRAINED_CHECKPOINT
        trainer.save_checkpoint(trained_checkpoint, weights_only=True)

    for category in categories:
        reference_images = datamodule.load_images(references[category]) if references[category] else None
        method.prepare_category(category, reference_images)
        trainer.test(method, dataloaders=datamodule.category_test_dataloader(category), verbose=False)

    mean = evaluator.macro_mean()
    probe = next((callback for callback in extra_callbacks if isinstance(callback, EfficiencyProbe)), None)
    efficiency = probe.summary(method) if probe else method.parameter_counts()
    if logger:
        logger.log_metrics({f"test/{name}": value for name, value in mean.items() if value is not None})
        logger.log_metrics(
            {f"efficiency/{k}": v for k, v in efficiency.items() if isinstance(v, int | float)}
        )
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
            "reference_seed": reference_seed if shots else None,
        },
    )
    results_path = write_json_atomic(output_dir / RESULTS_FILE, payload)
    title = f"{names['method']} | {names['backbone']} | {names['data']} | shots={shots} | seed={cfg.seed}"
    if shots:
        title += f" | reference_seed={reference_seed}"
    print_metrics_table(evaluator.results, mean, title=title)
    print(f"results: {results_path}")
    close_logger(logger)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return mean.get("image_auroc")


def train(cfg: DictConfig) -> float | None:
    """Fit the method's trainable parameters (if any) on the auxiliary data, then test."""
    return run(cfg, fit=True)


def evaluate(cfg: DictConfig) -> float | None:
    """Test only; trained parameters come from ``ckpt_path``."""
    return run(cfg, fit=False)
