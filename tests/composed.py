"""Hydra compositions for tests, each distinct one done once per test process.

A composition takes about a tenth of a second and many tests compose the same config-group choices,
so ``compose_config`` keeps each composition and hands every caller its own copy (tests change the
configs they get). ``method_file`` reads a method's config file without composing, for parametrize
lists built at collection time.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.defaults_list import Overrides
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

import anomaly_vlm.config  # noqa: F401  (the typed schema must be registered before composing)

CONF = Path(__file__).resolve().parents[1] / "conf"


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...], hydra: bool, cwd: str) -> bytes:
    # cwd is part of the key: the hydra node records it. A run in this process may have left Hydra
    # initialised; compose as a fresh process would.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ConfigRepository.load_config = _load_config_once
        try:
            # Kept pickled: unpickling a copy is several times faster than copy.deepcopy of the config,
            # and keeps its types, flags and interpolations the same.
            return pickle.dumps(compose(config_name, overrides=list(overrides), return_hydra_config=hydra))
        finally:
            ConfigRepository.load_config = _hydra_load_config


_hydra_load_config = ConfigRepository.load_config
_loaded: dict[tuple[str, str], bytes] = {}


def _load_config_once(self: ConfigRepository, config_path: str):
    # Hydra reads and parses each file of the defaults list anew for every composition, a tenth or more
    # of its time; the files of conf/ do not change while the tests run, so each is read once and every
    # composition gets its own copy (Hydra changes what it loads). Files found elsewhere (a test's
    # hydra.searchpath) and the ConfigStore's nodes are loaded as Hydra does.
    source = self._find_object_source(config_path=config_path, object_type=ObjectType.CONFIG)
    # By name, as Hydra does: its plugin discovery imports the class anew.
    if type(source).__name__ != "FileConfigSource" or Path(source.path) != CONF:
        return _hydra_load_config(self, config_path)
    key = (source.provider, config_path)
    if key not in _loaded:
        _loaded[key] = pickle.dumps(_hydra_load_config(self, config_path))
    return pickle.loads(_loaded[key])


def compose_config(config_name: str, overrides: Sequence[str] = (), *, hydra: bool = False) -> DictConfig:
    """``hydra.compose`` of ``conf/<config_name>.yaml``, a fresh copy for each call.

    Hydra composes in two steps: the config-group choices among the overrides (``method=aprillab``) give
    the defaults list and the merged config, then the value overrides (``shots=4``) are applied to it in
    struct mode. Without the hydra node, the first step is done once per distinct set of group choices
    and the second, for each call, by Hydra's own function on a copy: a call fails or succeeds, and
    returns, as its own composition would. With the hydra node (it records every override), each
    distinct override list is composed once.

    Interpolations stay unresolved in the kept compositions, so environment variables and the clock are
    read when the caller resolves its copy. Compositions that fail are not kept (each call raises again).
    """
    if hydra:
        return pickle.loads(_composed(config_name, tuple(overrides), True, os.getcwd()))
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values = Overrides(_repository(), parsed).config_overrides
    if any(override.get_key_element().lstrip("+~").startswith("hydra") for override in values):
        # hydra.searchpath and the like change the composition itself.
        return pickle.loads(_composed(config_name, tuple(overrides), False, ""))
    groups = tuple(override.input_line for override in parsed if not any(override is v for v in values))
    cfg = pickle.loads(_composed(config_name, groups, False, ""))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


@functools.cache
def _repository() -> ConfigRepository:
    return ConfigRepository(create_config_search_path(str(CONF)))


def compose_each(config_name: str, override_sets: Iterable[Sequence[str]]) -> list[DictConfig]:
    """``compose_config(config_name, overrides)`` for each set (sets that share config-group choices
    share one composition)."""
    return [compose_config(config_name, overrides) for overrides in override_sets]


@functools.cache
def _method_file(method: str) -> dict:
    return yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())


def method_file(method: str) -> dict:
    """The values of ``conf/method/<method>.yaml`` as written (no composition, no defaults list)."""
    return copy.deepcopy(_method_file(method))


def first_job(overrides: Sequence[str]) -> list[str]:
    """The overrides of the first job of a sweep: each sweep override (``a=1,2``) at its first value."""
    job = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_sweep_override():
            job.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        else:
            job.append(override.input_line)
    return job
