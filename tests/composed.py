"""Hydra compositions for tests, each distinct one done once per test process.

A composition takes about a tenth of a second and many tests compose the same overrides, so
``compose_config`` keeps the first result and hands every caller its own deep copy (tests change the
configs they get). ``compose_each`` composes many override sets that share config-group choices (an
analysis's sweeps) from one composition per distinct choice. ``method_file`` reads a method's config file
without composing, for parametrize lists built at collection time.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.defaults_list import Overrides
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

import anomaly_vlm.config  # noqa: F401  (the typed schema must be registered before composing)

CONF = Path(__file__).resolve().parents[1] / "conf"


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...], hydra: bool, cwd: str) -> DictConfig:
    # cwd is part of the key: the hydra node records it. A run in this process may have left Hydra
    # initialised; compose as a fresh process would.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)


def compose_config(config_name: str, overrides: Sequence[str] = (), *, hydra: bool = False) -> DictConfig:
    """``hydra.compose`` of ``conf/<config_name>.yaml``, a fresh copy for each call.

    Interpolations stay unresolved in the kept composition, so environment variables and the clock are
    read when the caller resolves its copy, as with a fresh composition. Compositions that fail are not
    kept (each call raises again).
    """
    cwd = os.getcwd() if hydra else ""
    return copy.deepcopy(_composed(config_name, tuple(overrides), hydra, cwd))


@functools.cache
def _repository() -> ConfigRepository:
    return ConfigRepository(create_config_search_path(str(CONF)))


def compose_each(config_name: str, override_sets: Iterable[Sequence[str]]) -> list[DictConfig]:
    """``compose_config(config_name, overrides)`` for each set, sharing the config-group choices.

    Hydra composes in two steps: the config-group choices of the overrides (``experiment=...``) give the
    defaults list and the merged config, then the value overrides (``shots=4``) are applied to it in
    struct mode. Here the first step is done once per distinct set of group choices and the second, for
    each set, by Hydra's own function on a copy: a set fails or succeeds as its own composition would.
    """
    parser = OverridesParser.create()
    configs = []
    for overrides in override_sets:
        parsed = parser.parse_overrides(list(overrides))
        values = Overrides(_repository(), parsed).config_overrides
        if any(override.get_key_element().lstrip("+~").startswith("hydra") for override in values):
            configs.append(compose_config(config_name, overrides))  # the hydra node is dropped below
            continue
        groups = [override.input_line for override in parsed if not any(override is v for v in values)]
        cfg = compose_config(config_name, groups)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        configs.append(cfg)
    return configs


@functools.cache
def _method_file(method: str) -> dict:
    return yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())


def method_file(method: str) -> dict:
    """The values of ``conf/method/<method>.yaml`` as written (no composition, no defaults list)."""
    return copy.deepcopy(_method_file(method))
