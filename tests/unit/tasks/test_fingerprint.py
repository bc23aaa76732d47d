"""The training fingerprint: the whole config minus an explicit exclusion list."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from anomaly_vlm.tasks import resume
from tests.composed import compose_config

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture(scope="module")
def cfg():
    composed = compose_config("train", ["experiment=aprillab_synthetic", "logger=none"])
    with open_dict(composed):
        composed.paths.output_dir = "somewhere"  # what Hydra's runtime fills in
    return composed


def _changed(cfg, key: str, value) -> object:
    # An independent copy: unpickling is ~5x faster than OmegaConf.create(to_container(...)).
    copy = pickle.loads(pickle.dumps(cfg))
    with open_dict(copy):
        OmegaConf.update(copy, key, value, force_add=True)
    return copy


def test_every_excluded_key_is_a_real_key(cfg):
    """No stale or misspelt entry: each is in a composed config, or a Trainer argument."""
    import inspect

    import lightning as L

    others = [
        compose_config("evaluate", ["mode=predict", "logger=none"]),
        compose_config("train", ["data=folder", "logger=none"]),
        compose_config("train", ["method=promptad", "logger=none"]),
    ]
    trainer_arguments = set(inspect.signature(L.Trainer.__init__).parameters) | {"_target_"}
    # set by callers that run jobs without Hydra
    optional = {"names"}
    for key in resume.NOT_TRAINING_KEYS + resume.TRAINING_EXCEPTIONS + resume.TRAINING_KEYS:
        if key.startswith("trainer."):
            assert key.removeprefix("trainer.") in trainer_arguments, key
            continue
        found = [
            OmegaConf.select(config, key, default="<absent>", throw_on_resolution_failure=False) != "<absent>"
            for config in (cfg, *others)
        ]
        assert any(found) or key in optional, key


def test_excluded_keys_do_not_change_the_fingerprint_and_others_do(cfg):
    base = resume.training_fingerprint(cfg)
    for key, value in [
        ("shots", 4),
        ("reference_seed", 7),
        ("data.categories", ["nut"]),
        ("datamodule.batch_size", 1),
        ("trainer.log_every_n_steps", 3),
        ("overwrite", True),
        ("reuse_backbone", False),
        # deployment, decisions and metrics are computed after training
        ("save_detector", True),
        ("threshold.method", "fixed"),
        ("threshold.target_fpr", 0.1),
        ("threshold.max_holdout", 0),
        ("metrics.aupro", "exact"),
        ("save_predictions", True),
        ("num_overlays", 3),
        ("datamodule.num_workers", 3),
        ("backbone.cache_dir", "elsewhere"),
    ]:
        assert resume.training_fingerprint(_changed(cfg, key, value)) == base, key
    for key, value in [
        ("seed", 5),
        ("method.lr", 0.5),
        ("train_data.categories", ["nut"]),
        ("data.class_names", {"disc": "round thing"}),
        ("trainer.max_epochs", 2),
        ("datamodule.train_batch_size", 3),
        ("datamodule.seed", 3),
        ("datamodule.train_mosaic_probability", 0.2),
        ("train_data.synthesize_anomalies", True),
        # a key nobody listed yet counts: a new training option never reuses a stale checkpoint
        ("datamodule.some_new_option", 1),
        ("brand_new_top_level_key", "x"),
    ]:
        assert resume.training_fingerprint(_changed(cfg, key, value)) != base, key


def _classified(dotted: str) -> bool:
    parts = dotted.split(".")
    listed = set(resume.NOT_TRAINING_KEYS + resume.TRAINING_KEYS + resume.TRAINING_EXCEPTIONS)
    return any(".".join(parts[:end]) in listed for end in range(1, len(parts) + 1))


def _shipped_keys() -> set[str]:
    """Every top-level key of the schema, and every key that a file under conf/ sets in a group that
    is not classified whole (in its own group folder, or from a file of the global package)."""
    from dataclasses import fields

    from anomaly_vlm.config import EvaluateConfig, TrainConfig

    keys = {field.name for schema in (TrainConfig, EvaluateConfig) for field in fields(schema)}
    mixed = {key for key in keys if not _classified(key)}
    for path in sorted(CONF.rglob("*.yaml")):
        node = OmegaConf.load(path)
        group = path.relative_to(CONF).parts[0]
        if group in mixed:
            keys |= {f"{group}.{key}" for key in node if key != "defaults"}
        elif path.read_text().startswith("# @package _global_"):
            for name in mixed & set(node):
                keys |= {f"{name}.{key}" for key in node[name]}
    return keys


def test_every_key_of_the_shipped_configs_is_classified():
    """A new key (top level, or in a group that mixes both kinds) forces a decision: does it change
    the trained parameters (TRAINING_KEYS) or not (NOT_TRAINING_KEYS)?"""
    keys = _shipped_keys()
    assert {"seed", "save_detector", "threshold", "trainer.max_epochs", "datamodule.num_workers"} <= keys
    # A group that mixes both kinds is classified key by key.
    mixed = {key for key in keys if any(other.startswith(f"{key}.") for other in keys)}
    missing = sorted(key for key in keys if not _classified(key) and key not in mixed)
    assert not missing, f"classify these keys in anomaly_vlm/tasks/resume.py: {missing}"


def test_the_scan_of_conf_sees_every_key_of_a_composed_config(cfg):
    """The static scan finds what composition produces (here for the aprillab experiment)."""
    keys = _shipped_keys()
    for key in cfg:
        if _classified(key):
            continue
        node = cfg._get_node(key)
        assert OmegaConf.is_dict(node), key
        assert {f"{key}.{child}" for child in node} <= keys


def test_the_two_key_lists_do_not_contradict_each_other():
    assert not set(resume.TRAINING_KEYS) & set(resume.NOT_TRAINING_KEYS)
    for key in resume.TRAINING_KEYS:
        parts = key.split(".")
        excluded = [
            ".".join(parts[:end])
            for end in range(1, len(parts))
            if ".".join(parts[:end]) in resume.NOT_TRAINING_KEYS
        ]
        assert not excluded, f"{key} counts but {excluded} is excluded (use TRAINING_EXCEPTIONS)"


def test_a_group_that_is_null_is_fingerprinted(cfg):
    """``train_data: null`` with excluded keys below it (a method that trains without train_data)."""
    copy = _changed(cfg, "train_data", None)
    assert resume.training_fingerprint(copy) != resume.training_fingerprint(cfg)
