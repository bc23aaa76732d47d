"""Setting a job up: instantiate from the config, check every input, build the method.

Everything that can be checked without touching the model (dataset layout, shots, training data,
block indices, checkpoint files, image headers) is checked before the backbone is built, so a bad
input fails in seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import anomaly_vlm.resolvers  # noqa: F401  (configs interpolate its resolvers, e.g. num_workers)
from anomaly_vlm.backbones.reuse import JOB_BACKBONES
from anomaly_vlm.data import AnomalyDataModule, DataError, DatasetSource, Sample
from anomaly_vlm.data.checks import preflight
from anomaly_vlm.data.sampling import ShotsError, write_reference_log
from anomaly_vlm.loggers import wandb as wandb_helpers
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.runtime import in_multirun
from anomaly_vlm.tasks import resume
from anomaly_vlm.tasks.errors import CheckpointError, ConfigError, MissingValueError

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


# First bytes of the files torch.save writes: a zip archive (default since torch 1.6) or a raw pickle.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def check_checkpoint_file(path: str) -> None:
    """Reject a ``ckpt_path`` that cannot be a checkpoint before any weights load.

    Reads four bytes: a folder, an empty file or an image would otherwise fail deep inside unpickling.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise CheckpointError(
            f"ckpt_path={path} is a folder, not a checkpoint file "
            f"(a training run writes {resume.TRAINED_CHECKPOINT} below its run folder)"
        )
    if not file.exists():
        raise CheckpointError(f"ckpt_path does not exist: {path}")
    with file.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"ckpt_path={path} is an empty file, not a checkpoint")
    if not head.startswith(_CHECKPOINT_MAGIC):
        raise CheckpointError(
            f"ckpt_path={path} is not a checkpoint (expected a .ckpt written by train.py, found a file "
            f"starting with {head!r})"
        )


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


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate`` that surfaces our own clear errors instead of Hydra's wrapped repr of them.

    Built objects are passed through a partial: Hydra would turn dataclass kwargs back into configs.
    A value left at ``???`` is reported by its full key before anything is built.
    """
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        # missing_keys already names them from the config root (``data.root``).
        raise MissingValueError(f"{', '.join(missing)} must be set (add {missing[0]}=... to the command)")
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


#: Folders of per-image artefacts a job writes into its run folder (checkpoints are kept for resumption).
OVERLAY_DIR = "overlays"
ARTEFACT_DIRS = (OVERLAY_DIR, "predictions", "heatmaps", "masks", "detectors")


def clear_stale_artefacts(output_dir: Path) -> None:
    """Remove the per-image artefacts of an earlier run, so ``overwrite=true`` leaves no stale files."""
    for name in ARTEFACT_DIRS:
        shutil.rmtree(output_dir / name, ignore_errors=True)


def guard_finished_run(output_dir: Path, overwrite: bool) -> dict | None:
    """Never replace a finished result unless asked to; in a multirun, return it so the job is skipped.

    With ``overwrite`` the earlier run's overlays, predictions and heatmaps are removed as well: a new
    run may write fewer of them, and stale ones would be mistaken for its own.
    """
    finished = resume.finished_result(output_dir, overwrite)
    if finished is None and overwrite:
        clear_stale_artefacts(output_dir)
    return finished


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


def check_shots_supported(method_node: DictConfig, shots: int, method_name: str | None) -> None:
    """Reject few-shot for zero-shot-only methods, and zero-shot for few-shot-only ones, before anything
    heavy is built."""
    method_class = get_class(method_node._target_)
    name = method_name or getattr(method_class, "method_name", method_class.__name__)
    if shots and not getattr(method_class, "supports_few_shot", True):
        raise ShotsError(f"method '{name}' is zero-shot only; shots={shots} is not supported (use shots=0)")
    if not shots and getattr(method_class, "requires_few_shot", False):
        raise ShotsError(
            f"method '{name}' is few-shot only: it learns from the normal reference images of each "
            "category; shots=0 is not supported (use shots=1, 2 or 4)"
        )


def trains_on_auxiliary_data(cfg: DictConfig) -> bool:
    """Whether the configured method learns parameters on ``train_data``."""
    return bool(getattr(get_class(cfg.method._target_), "trains_on_auxiliary_data", False))


#: The published cross-domain protocol: a method tested on one benchmark trains on the other's test split
#: (``data`` choice -> ``train_data`` choice).
PROTOCOL_TRAINING_DATA = {"mvtec": "visa", "visa": "mvtec"}
#: Display names of the protocol's datasets, for the line that says which one was chosen.
DATASET_TITLES = {"mvtec": "MVTec AD", "visa": "VisA"}
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def needs_training_data(cfg: DictConfig, fit: bool) -> bool:
    """Whether this job trains a method on auxiliary data and was given none (nor trained parameters)."""
    return fit and not cfg.train_data and not cfg.ckpt_path and trains_on_auxiliary_data(cfg)


def group_options(group: str) -> list[str]:
    """The values a config group accepts (``conf/<group>/*.yaml``, or Hydra's search path in a run)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def compose_group(group: str, choice: str) -> DictConfig:
    """The node ``<group>=<choice>`` composes to (its defaults applied, interpolations kept), so it can be
    placed into a job's config as if it had been given on the command line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    overrides = [f"{group}={choice}"]
    if GlobalHydra.instance().is_initialized():
        loader = GlobalHydra.instance().config_loader()
        composed = loader.load_configuration(config_name="train", overrides=overrides, run_mode=RunMode.RUN)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose("train", overrides=overrides)
    return composed[group]


def use_protocol_training_data(cfg: DictConfig, names: dict[str, str | None], fit: bool) -> str | None:
    """Give a training job without ``train_data`` the published protocol's, when its test data has one.

    ``python train.py method=aprillab`` tests on MVTec AD, so it trains on VisA's test split (and the
    reverse), exactly as ``train_data=visa`` would; one log line says so. Returns the chosen value.
    """
    partner = PROTOCOL_TRAINING_DATA.get(names.get("data") or "")
    if partner is None or not needs_training_data(cfg, fit):
        return None
    with open_dict(cfg):
        cfg.train_data = compose_group("train_data", partner)
    names["train_data"] = partner
    method, data = names.get("method"), names["data"]
    setting = ""
    if f"{method}_{data}" in group_options("experiment"):
        setting = f"; experiment={method}_{data} is the whole published setting (epochs, metrics)"
    log.info(
        "train_data=%s: method '%s' trains on auxiliary data and none was given; the published cross-domain "
        "protocol for data=%s trains on the %s test split (train_data=... chooses another%s)",
        partner,
        method,
        data,
        DATASET_TITLES.get(partner, partner),
        setting,
    )
    return partner


def check_training_data(
    cfg: DictConfig, fit: bool, method_name: str | None, data_name: str | None = None
) -> None:
    """A method that learns on auxiliary data needs ``train_data`` (or trained weights) to be useful.

    ``data_name``: the job's ``data`` choice; with a published partner the job trains on it
    (:func:`use_protocol_training_data`), so nothing is missing.
    """
    method_class = get_class(cfg.method._target_)
    if not getattr(method_class, "trains_on_auxiliary_data", False) or cfg.ckpt_path:
        return
    name = method_name or getattr(method_class, "method_name", method_class.__name__)
    if needs_training_data(cfg, fit) and data_name not in PROTOCOL_TRAINING_DATA:
        tested = f"data={data_name}" if data_name else "the test data"
        raise DataError(
            f"method '{name}' trains on an auxiliary dataset and {tested} has no published partner to "
            f"train on: set train_data=<{'|'.join(group_options('train_data'))}> (e.g. train_data=folder "
            "train_data.root=... with masks, or add train_data.synthesize_anomalies=true "
            "datamodule.train_split=train for normal images only), or load trained parameters with "
            "ckpt_path=..."
        )
    if not fit:
        log.warning("method '%s' is evaluated with untrained parameters (no ckpt_path given)", name)


def backbone_depths(backbone_node: DictConfig) -> tuple[int, int] | None:
    """(vision blocks, text blocks) of the configured backbone from its model config, without weights.

    None when the model config is unknown (the backbone's own error names the model later).
    """
    import open_clip

    from anomaly_vlm.backbones.clip import register_package_model_configs

    register_package_model_configs()
    model_config = open_clip.get_model_config(str(backbone_node.get("model")))
    if not model_config:
        return None
    return int(model_config["vision_cfg"]["layers"]), int(model_config["text_cfg"]["layers"])


def _block_numbers(key: str, value: Any, many: bool) -> list[int]:
    """The block numbers of a ``method.<key>`` value (a list when ``many``, else one number)."""
    values = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    shape = f"a list of block numbers, e.g. {key}=[2,4]" if many else f"one block number, e.g. {key}=2"
    if many != isinstance(value, ListConfig | list | tuple) or not all(
        isinstance(number, int) and not isinstance(number, bool) for number in values
    ):
        raise ConfigError(f"{key}={value}: expected {shape}")
    return values


def check_block_options(cfg: DictConfig, depths: tuple[int, int], model: str) -> None:
    """The method's options that name blocks (its class's ``block_options``) against the backbone depth."""
    depth_of = dict(zip(("vision", "text"), depths, strict=True))
    options = getattr(get_class(cfg.method._target_), "block_options", {})
    for name, option in options.items():
        value = cfg.method.get(name)
        if value is None:
            continue
        key = f"method.{name}"
        numbers = _block_numbers(key, value, option.many)
        limit = min(depth_of[encoder] for encoder in option.encoders)
        blocks = f"1..{limit} of {model}"
        if len(option.encoders) > 1:
            blocks = f"1..{limit} (blocks of the shallower encoder of {model})"
        if not option.many:
            if not 1 <= numbers[0] <= limit:
                raise ConfigError(f"{key}={numbers[0]} outside {blocks}")
            continue
        if not numbers:
            raise ConfigError(f"{key}=[] names no block; give at least one, e.g. {key}=[{limit}]")
        repeated = sorted({number for number in numbers if numbers.count(number) > 1})
        if repeated:
            raise ConfigError(f"{key}={numbers} repeats blocks {repeated}")
        bad = [number for number in numbers if not 1 <= number <= limit]
        if bad:
            raise ConfigError(f"{key}={numbers}: blocks {bad} outside {blocks}; e.g. {key}=[{limit}]")


def check_backbone_depths(cfg: DictConfig, backbone_name: str | None) -> None:
    """Block indices of the method and prompt set must exist in the backbone (checked before weights load).

    A method file written for ViT-L (24 blocks) combined with ``backbone=tiny`` (8) is a config mistake,
    not a crash inside model construction. Which method options name blocks is declared by the method
    class (``AnomalyMethod.block_options``).
    """
    depths = backbone_depths(cfg.backbone)
    if depths is None:
        return
    text = depths[1]
    model = f"backbone '{cfg.backbone.get('model')}'"
    if backbone_name:
        model = f"backbone={backbone_name} ('{cfg.backbone.get('model')}')"
    check_block_options(cfg, depths, model)
    depth = cfg.get("prompts", {}).get("deep_prompt_depth")
    if depth is not None and int(depth) > text:
        raise ConfigError(
            f"prompts.deep_prompt_depth={depth} exceeds the {text} text blocks of {model}; "
            f"set prompts.deep_prompt_depth<={text}"
        )


def draw_all_references(
    datamodule: AnomalyDataModule, categories: list[str], shots: int, seed: int
) -> dict[str, list[Sample]]:
    return {category: datamodule.reference_samples(category, shots, seed) for category in categories}


def is_repeated_zero_shot_draw(cfg: DictConfig) -> bool:
    """Whether this multirun job would repeat another one: a zero-shot job uses no references, so of
    the reference draws a method sweeps by default (``reference_seed`` = 0 .. ``reference_draws`` - 1)
    only the first one runs."""
    if cfg.shots != 0 or not in_multirun():
        return False
    return 0 < cfg.reference_seed < cfg.reference_draws


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
    """Checks, reference draws, then the model: the part shared by testing and prediction.

    Everything cheap (shots, training data, file headers) is checked before the backbone is built, so a
    bad input fails in seconds.
    """
    categories = datamodule.categories
    shots, reference_seed = cfg.shots, cfg.reference_seed
    references = draw_all_references(datamodule, categories, shots, reference_seed)
    check_shots_supported(cfg.method, shots, method_name)
    check_training_data(cfg, fit, method_name, group_choices(cfg)["data"])
    if fit and datamodule.train_source is not None and not cfg.ckpt_path:
        datamodule.check_training_data()  # defects to learn from, before any weights load
    check_backbone_depths(cfg, group_choices(cfg)["backbone"])
    if cfg.ckpt_path:
        check_checkpoint_file(str(cfg.ckpt_path))
    class_names = dataset_class_names(*sources)
    preflight(datamodule, categories, references)
    if shots:
        write_reference_log(output_dir / "references.json", references, shots, reference_seed)

    backbone = build_backbone(cfg)
    prompts = with_class_names(build(cfg.prompts), class_names)
    method: AnomalyMethod = build(
        cfg.method, backbone=backbone, prompts=prompts, shots=shots, text_cache_dir=cfg.paths.cache_dir
    )
    if cfg.ckpt_path:
        load_checkpoint(method, str(cfg.ckpt_path))
    if cfg.feature_cache:
        method.feature_cache = build(cfg.feature_cache)
    return PreparedJob(method, references, shots, reference_seed)


def build_backbone(cfg: DictConfig) -> Any:
    """The job's frozen backbone; the jobs of a multirun in one process build an identical one once."""
    if not (cfg.reuse_backbone and in_multirun()):
        return build(cfg.backbone)
    identity = json.dumps(OmegaConf.to_container(cfg.backbone, resolve=True), sort_keys=True, default=str)
    return JOB_BACKBONES.get(identity, lambda: build(cfg.backbone))


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


def build_datamodule(
    cfg: DictConfig, names: dict[str, str | None], fit: bool = False
) -> tuple[AnomalyDataModule, tuple]:
    """The labelled datamodule and its sources ``(train_source, source)``; only trained methods get
    train_data (when ``fit``, the published protocol's if none is given)."""
    check_labelled_data(cfg, names["data"])
    use_protocol_training_data(cfg, names, fit)
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


def check_labelled_data(cfg: DictConfig, data_name: str | None) -> None:
    """Testing needs labels: unlabelled images (``data=images``) are scored by ``evaluate.py mode=predict``.

    Decided from the data class, before its own keys (``data.path``) are asked for.
    """
    source_class = get_class(cfg.data._target_)
    if getattr(source_class, "labelled", True):
        return
    name = data_name or getattr(source_class, "name", source_class.__name__)
    raise DataError(
        f"data={name} holds unlabelled images, which have no metrics to test: score them with "
        "`python evaluate.py mode=predict data.path=...`"
    )


#: Keys of a ``train_data`` config that configure synthesized defects, not the dataset
#: (``conf/synthesis/default.yaml``, merged into every ``conf/train_data`` file).
SYNTHESIS_KEYS = ("synthesize_anomalies", "synthesis")


def split_synthesis(node: DictConfig) -> tuple[DictConfig, DictConfig | None]:
    """A ``train_data`` node as (the dataset's own keys, the synthesizer's node or None when off)."""
    # A copy keeps its parent, so interpolations (${paths.cache_dir}) and full key names still work.
    dataset = copy.copy(node)
    with open_dict(dataset):
        for key in SYNTHESIS_KEYS:
            dataset.pop(key, None)
    enabled = node.get("synthesize_anomalies", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"train_data.synthesize_anomalies={enabled!r} must be true or false")
    if not enabled:
        return dataset, None
    synthesis = node.get("synthesis")
    if synthesis is None:
        raise ConfigError(
            "train_data.synthesize_anomalies=true needs train_data.synthesis (conf/synthesis/default.yaml)"
        )
    return dataset, synthesis
