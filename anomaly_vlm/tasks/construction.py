"""Building a job from its checked config: datasets, datamodule, backbone, prompts, method, logger.

The config has passed :func:`~anomaly_vlm.tasks.config_checks.check_config` when these run; what is
checked here needs the data (dataset layout, reference draws, image headers), and all of it still runs
before the backbone is built, so a bad input fails in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import anomaly_vlm.resolvers  # noqa: F401  (configs interpolate its resolvers, e.g. num_workers)
from anomaly_vlm.backbones.precision import RELEASE_GPU_PRECISION, resolve_precision
from anomaly_vlm.backbones.reuse import JOB_BACKBONES
from anomaly_vlm.data import AnomalyDataModule, DatasetSource, Sample
from anomaly_vlm.data.checks import preflight
from anomaly_vlm.data.sampling import write_reference_log
from anomaly_vlm.loggers import wandb as wandb_helpers
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.runtime import in_multirun
from anomaly_vlm.tasks.errors import CheckpointError
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.training_data import split_synthesis, trains_on_auxiliary_data

log = logging.getLogger(__name__)

NAMED_GROUPS = ("method", "backbone", "prompts", "data", "train_data")


# Lightning's advice to raise num_workers is noise for per-category loaders of small test sets.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def quiet_lightning() -> None:
    """One line per Lightning message (Hydra's handler already prints them), no product adverts."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.propagate = True
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def group_choices(cfg: DictConfig) -> dict[str, str | None]:
    """Which file of each config group this job uses (method, backbone, ...)."""
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        return {group: choices.get(group) for group in NAMED_GROUPS}
    names = cfg.get("names") or {}
    return {group: names.get(group) for group in NAMED_GROUPS}


def load_checkpoint(method: AnomalyMethod, path: str) -> None:
    """``method.load_trainable_checkpoint`` with its failures as :class:`CheckpointError`."""
    try:
        method.load_trainable_checkpoint(path)
    except (pickle.UnpicklingError, EOFError) as error:
        raise CheckpointError(
            f"ckpt_path={path} is not a checkpoint ({type(error).__name__}: {error})"
        ) from error
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        if isinstance(error, FileNotFoundError | IsADirectoryError):
            raise CheckpointError(f"ckpt_path does not exist: {path}") from error
        message = str(error) if "ckpt_path" in str(error) else f"ckpt_path={path}: {error}"
        raise CheckpointError(message) from error


def build_logger(cfg: DictConfig, names: dict[str, str | None]) -> Any:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    if wandb_helpers.is_wandb_config(cfg.logger):
        return build(cfg.logger, **wandb_helpers.run_fields(cfg, names))
    return instantiate(cfg.logger)


def dataset_class_names(*sources: DatasetSource | None) -> dict[str, str]:
    """``data.class_names`` (and ``train_data.class_names``), checked against their categories."""
    names: dict[str, str] = {}
    for source in sources:
        if source is not None:
            names.update(source.class_names)
    return names


def with_class_names(prompts: PromptSet, class_names: dict[str, str]) -> PromptSet:
    """The prompt set with the datasets' class names merged in (the data's names win).

    A learned prompt set (AnomalyCLIP's object-agnostic prompts) has no class-name slot: the names are
    ignored with one log line rather than failing a run that merely shares a data config.
    """
    if not class_names:
        return prompts
    if not hasattr(prompts, "class_name_overrides"):
        log.info(
            "prompt set '%s' has no class names (learned prompts): data class_names %s are ignored",
            getattr(prompts, "name", type(prompts).__name__),
            sorted(class_names),
        )
        return prompts
    return dataclasses.replace(prompts, class_name_overrides={**prompts.class_name_overrides, **class_names})


def draw_all_references(
    datamodule: AnomalyDataModule, categories: list[str], shots: int, seed: int
) -> dict[str, list[Sample]]:
    return {category: datamodule.reference_samples(category, shots, seed) for category in categories}


@dataclasses.dataclass
class PreparedJob:
    """What the test (or predict) loop needs once every input check has passed."""

    method: AnomalyMethod
    references: dict[str, list[Sample]]
    shots: int
    reference_seed: int


def prepare_job(
    cfg: DictConfig,
    datamodule: AnomalyDataModule,
    sources: tuple[DatasetSource | None, ...],
    output_dir: Path,
    method_name: str | None,
    fit: bool,
) -> PreparedJob:
    """Reference draws, the checks that need the data, then the model: shared by testing and prediction.

    The config checks have run (:func:`~anomaly_vlm.tasks.config_checks.check_config`); the data checks
    here (reference draws, training defects, file headers) also run before the backbone is built, so a
    bad input fails in seconds.
    """
    categories = datamodule.categories
    shots, reference_seed = cfg.shots, cfg.reference_seed
    references = draw_all_references(datamodule, categories, shots, reference_seed)
    if fit and datamodule.train_source is not None and not cfg.ckpt_path:
        datamodule.check_training_data()  # defects to learn from, before any weights load
    if not fit and not cfg.ckpt_path and trains_on_auxiliary_data(cfg):
        log.warning("method '%s' is evaluated with untrained parameters (no ckpt_path given)", method_name)
    class_names = dataset_class_names(*sources)
    preflight(datamodule, categories, references)
    if shots:
        write_reference_log(output_dir / "references.json", references, shots, reference_seed)

    backbone = build_backbone(cfg, method_name)
    prompts = with_class_names(build(cfg.prompts), class_names)
    method: AnomalyMethod = build(
        cfg.method, backbone=backbone, prompts=prompts, shots=shots, text_cache_dir=cfg.paths.cache_dir
    )
    if cfg.ckpt_path:
        load_checkpoint(method, str(cfg.ckpt_path))
    if cfg.feature_cache:
        method.feature_cache = build(cfg.feature_cache)
    return PreparedJob(method, references, shots, reference_seed)


def build_backbone(cfg: DictConfig, method_name: str | None = None) -> Any:
    """The job's frozen backbone; the jobs of a multirun in one process build an identical one once.

    ``backbone.precision=auto`` is resolved first and the concrete precision written into the job's
    config, so results.json, saved detectors and resumption record what ran (a detector saved on a CPU
    with bf16 runs the same precision on any machine); the choice is printed.
    """
    requested, reason = resolve_job_precision(cfg, method_name)
    if not (cfg.reuse_backbone and in_multirun()):
        backbone = build(cfg.backbone)
    else:
        identity = json.dumps(OmegaConf.to_container(cfg.backbone, resolve=True), sort_keys=True, default=str)
        backbone = JOB_BACKBONES.get(identity, lambda: build(cfg.backbone))
    if requested is not None and hasattr(backbone, "precision"):
        backbone.requested_precision, backbone.precision_reason = requested, reason
        print(f"backbone precision: {backbone.precision} ({reason})")
    return backbone


def resolve_job_precision(cfg: DictConfig, method_name: str | None) -> tuple[str | None, str]:
    """``(requested, reason)`` of ``backbone.precision``; ``auto`` becomes the concrete value in ``cfg``
    (the device from ``trainer.accelerator``, the GPU precision from the method's official release)."""
    requested = cfg.backbone.get("precision")
    if requested is None:
        return None, ""
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    device = "cuda" if accelerator in ("gpu", "cuda") else "cpu" if accelerator == "cpu" else None
    resolved, reason = resolve_precision(str(requested), device, RELEASE_GPU_PRECISION.get(method_name or ""))
    if resolved != requested:
        with open_dict(cfg):
            cfg.backbone.precision = resolved
    return str(requested), reason


def feature_cache_report(method: AnomalyMethod) -> dict[str, Any] | None:
    """Keep the feature cache under its size limit and say what it did (for results.json)."""
    cache = method.feature_cache
    if cache is None:
        return None
    if cache.stats.written_bytes:
        cache.evict()
    return {"enabled": cache.enabled, "dtype": cache.dtype, **dataclasses.asdict(cache.stats)}


def print_feature_cache_summary(method: AnomalyMethod) -> None:
    """The run's last line: feature-cache hits, misses, bypassed images and the folder's size."""
    if method.feature_cache is not None:
        print(method.feature_cache.summary())


def build_datamodule(cfg: DictConfig, names: dict[str, str | None]) -> tuple[AnomalyDataModule, tuple]:
    """The labelled datamodule and its sources ``(train_source, source)``; only trained methods get
    train_data (chosen before, :func:`~anomaly_vlm.tasks.training_data.use_protocol_training_data`)."""
    source = build(cfg.data)
    if cfg.data.get("name"):
        names["data"] = str(cfg.data.name)  # e.g. data=meta_json data.name=mpdd: tables per dataset
    train_source = None
    synthesizer = None
    if cfg.train_data:
        if trains_on_auxiliary_data(cfg):
            dataset_node, synthesis_node = split_synthesis(cfg.train_data)
            train_source = build(dataset_node)
            if synthesis_node is not None:
                synthesizer = build(synthesis_node)
                log.info(
                    "training on defects synthesized on the normal images of train_data: %s",
                    synthesizer.describe(),
                )
        else:
            # A sweep over methods shares one train_data; the training-free methods ignore it and their
            # results must not claim a training set.
            log.info("method '%s' does not train: train_data is ignored", names["method"])
            names["train_data"] = None
    datamodule = build(cfg.datamodule, source=source, train_source=train_source, train_synthesis=synthesizer)
    return datamodule, (train_source, source)
