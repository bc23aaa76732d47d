"""Checks of a composed job config that need neither data nor a model, run before anything is built.

:func:`check_config` is the one list of them; the runner, ``python -m anomaly_vlm.tasks.preflight`` and
the sweep check (every job of a multirun, before the first starts) all call it, so a mistake is caught
the same way wherever it is made: shots the method cannot take, a trained method without training data,
block numbers the backbone lacks, unlabelled data to test, a checkpoint path that is no checkpoint, a
set-dependent method saved as a detector, bad defect-synthesis options.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig

from anomaly_vlm.data import DataError
from anomaly_vlm.data.sampling import ShotsError
from anomaly_vlm.deploy.detector import check_detector_method
from anomaly_vlm.methods.base import CHECKPOINT_KEY
from anomaly_vlm.methods.official_weights import flatten, not_this_release_message, release_of
from anomaly_vlm.tasks import resume
from anomaly_vlm.tasks.errors import USER_ERRORS, CheckpointError, ConfigError
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.training_data import (
    PROTOCOL_TRAINING_DATA,
    group_options,
    needs_training_data,
    split_synthesis,
    trains_on_auxiliary_data,
)
from anomaly_vlm.untrusted import UntrustedFileError, lightning_checkpoint_types, load_torch_file

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig, names: dict[str, str | None], fit: bool) -> list[Exception]:
    """Every problem of a job's config found without data or a model, in the order a user fixes them.

    Args:
        cfg: the composed job config, its training data chosen
            (:func:`~anomaly_vlm.tasks.training_data.use_protocol_training_data`).
        names: the chosen file of each config group (``method``, ``data``, ``backbone``, ...).
        fit: the job trains (``train.py``) rather than only tests.

    Returns:
        The problems, each a user error (printed as one ``error:`` line); empty when the job can run.
    """
    checks = [
        lambda: check_labelled_data(cfg, names.get("data")) if cfg.get("mode") != "predict" else None,
        lambda: check_shots_supported(cfg.method, cfg.shots, names.get("method")),
        lambda: check_training_data(cfg, fit, names.get("method"), names.get("data")),
        lambda: check_synthesis(cfg) if fit else None,
        lambda: check_backbone_capabilities(cfg, names.get("method"), names.get("backbone")),
        lambda: check_backbone_depths(cfg, names.get("backbone")),
        lambda: check_backbone_precision(cfg),
        lambda: check_checkpoint_file(str(cfg.ckpt_path)) if cfg.get("ckpt_path") else None,
        lambda: check_release_owner(cfg.method, str(cfg.ckpt_path)) if cfg.get("ckpt_path") else None,
        lambda: check_saved_detector(cfg, names.get("method")),
        lambda: check_method_options(cfg.method),
    ]
    problems: list[Exception] = []
    for check in checks:
        try:
            check()
        except USER_ERRORS as error:
            problems.append(error)
        except ValueError as error:  # an option a built object refuses (synthesis settings)
            problems.append(ConfigError(str(error)))
    return problems


def raise_first(problems: list[Exception]) -> None:
    """Raise the first problem of :func:`check_config` (a single job stops at the first)."""
    if problems:
        raise problems[0]


def check_synthesis(cfg: DictConfig) -> None:
    """Bad ``train_data.synthesis`` options fail before any job (the synthesizer is cheap to build)."""
    if cfg.get("train_data") and trains_on_auxiliary_data(cfg):
        _, synthesis = split_synthesis(cfg.train_data)
        if synthesis is not None:
            build(synthesis)


def check_saved_detector(cfg: DictConfig, method_name: str | None) -> None:
    """``save_detector=true`` with a method whose scores depend on the scored set needs consent."""
    if cfg.get("save_detector"):
        method_class = get_class(cfg.method._target_)
        check_detector_method(method_class, cfg.get("detector_set_dependence"), method_name)


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


def check_release_owner(method_node: DictConfig, path: str) -> None:
    """Refuse, before any weights load, an authors' release file of another method (``ckpt_path=<AnomalyCLIP's
    epoch_15.pth> method=aprillab``). Anything else is left to the load, which checks every key and shape."""
    method_class = get_class(method_node._target_)
    try:
        payload = load_torch_file(path, what=f"ckpt_path={path}", allowed=lightning_checkpoint_types())
    except (UntrustedFileError, OSError):
        return  # the load reports it with the method's own wording
    if not isinstance(payload, dict) or CHECKPOINT_KEY in payload:
        return  # not a release file: this project's checkpoint (its metadata is checked on load)
    flat = flatten(payload)
    own = getattr(method_class, "official_weights", None)
    if own is not None and own.recognises(flat):
        return
    others = [owner for owner in release_of(flat) if owner[0] != getattr(method_class, "method_name", None)]
    if others:
        raise CheckpointError(not_this_release_message(method_class, flat, f"ckpt_path={path}"))


def check_shots_supported(method_node: DictConfig, shots: int, method_name: str | None) -> None:
    """Reject few-shot for zero-shot-only methods, and zero-shot for few-shot-only ones (the method class
    states the rule: ``AnomalyMethod.shots_problem``), before anything heavy is built."""
    problem = get_class(method_node._target_).shots_problem(int(shots), method_name)
    if problem:
        raise ShotsError(problem)


def check_training_data(
    cfg: DictConfig, fit: bool, method_name: str | None, data_name: str | None = None
) -> None:
    """A method that learns on auxiliary data needs ``train_data`` (or trained weights) to be useful.

    ``data_name``: the job's ``data`` choice; with a published partner the job trains on it
    (:func:`use_protocol_training_data`), so nothing is missing.
    """
    method_class = get_class(cfg.method._target_)
    if not trains_on_auxiliary_data(cfg) or cfg.ckpt_path:
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


def _backbone_class(backbone_node: DictConfig) -> type | None:
    target = backbone_node.get("_target_")
    if not target:
        return None
    try:
        return get_class(str(target))
    except (ImportError, ValueError, AttributeError):
        return None  # building it names the bad _target_ later


def check_method_options(method_node: DictConfig) -> None:
    """Options a method class can judge from the config alone (its ``check_options``, where it has one)
    are refused before weights load; its ``ValueError`` becomes one ``error:`` line."""
    check = getattr(get_class(method_node._target_), "check_options", None)
    if check is not None:
        check(method_node)


def check_backbone_capabilities(cfg: DictConfig, method_name: str | None, backbone_name: str | None) -> None:
    """A method must get what it needs from the backbone family (a text tower, CLIP's token API, patch
    tokens), from the two ``_target_`` classes' declarations, before anything is built."""
    capabilities = getattr(_backbone_class(cfg.backbone), "capabilities", None)
    method_class = get_class(cfg.method._target_)
    if capabilities is None or not hasattr(method_class, "backbone_problem"):
        return
    problem = method_class.backbone_problem(capabilities, method_name, backbone_name)
    if problem:
        raise ConfigError(problem)


def backbone_depths(backbone_node: DictConfig) -> tuple[int, int] | None:
    """(vision blocks, text blocks) of the configured backbone from its model config, without weights.

    None when the model config is unknown (the backbone's own error names the model later).
    """
    import open_clip

    from anomaly_vlm.backbones.clip import register_package_model_configs

    depths_of = getattr(_backbone_class(backbone_node), "config_depths", None)
    if depths_of is not None:
        return depths_of(backbone_node)
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


def check_backbone_precision(cfg: DictConfig) -> None:
    """``backbone.precision`` is one of the known values (before any weights load)."""
    from anomaly_vlm.backbones.precision import PRECISION_CHOICES

    value = (cfg.get("backbone") or {}).get("precision")
    if value is not None and str(value) not in PRECISION_CHOICES:
        raise ConfigError(f"backbone.precision={value} is not one of {', '.join(PRECISION_CHOICES)}")


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
