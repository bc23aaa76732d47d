"""Which data a training job learns from: the published protocol's partner when none is given, and
the split of a ``train_data`` node into the dataset and its synthesized defects."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, open_dict

from anomaly_vlm.tasks.errors import ConfigError

log = logging.getLogger(__name__)


def trains_on_auxiliary_data(cfg: DictConfig) -> bool:
    """Whether the configured method learns parameters on ``train_data``.

    A method class whose options decide it (``method=alignment``: only its strategies with trained parts
    learn) answers from the config alone with a ``trains_with(options)`` class method.
    """
    method_class = get_class(cfg.method._target_)
    if not getattr(method_class, "trains_on_auxiliary_data", False):
        return False
    trains_with = getattr(method_class, "trains_with", None)
    return True if trains_with is None else bool(trains_with(cfg.method))


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
