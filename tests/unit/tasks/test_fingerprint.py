"""The training fingerprint: the whole config minus an explicit exclusion list."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from anomaly_vlm.tasks import resume

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture(scope="module")
def cfg():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose("train", overrides=["experiment=aprillab_synthetic", "logger=none"])
    with open_dict(composed):
        composed.paths.output_dir = "somewhere"  # what Hydra's runtime fills in
    return composed


def _changed(cfg, key: str, value) -> object:
    copy = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(copy):
        OmegaConf.update(copy, key, value, force_add=True)
    return copy


def test_every_excluded_key_is_a_real_key(cfg):
    """No stale or misspelt entry: each is in a composed config, or a Trainer argument."""
    import inspect

    import lightning as L

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        others = [
            compose("evaluate", overrides=["mode=predict", "logger=none"]),
            compose("train", overrides=["data=folder", "logger=none"]),
        ]
    trainer_arguments = set(inspect.signature(L.Trainer.__init__).parameters) | {"_target_"}
    # set by callers that run jobs without Hydra
    optional = {"names"}
    for key in resume.NOT_TRAINING_KEYS + resume.TRAINING_EXCEPTIONS:
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
    ]:
        assert resume.training_fingerprint(_changed(cfg, key, value)) == base, key
    for key, value in [
        ("seed", 5),
        ("method.lr", 0.5),
        ("train_data.categories", ["nut"]),
        ("data.class_names", {"disc": "round thing"}),
        ("trainer.max_epochs", 2),
        ("datamodule.train_batch_size", 3),
        # a key nobody listed yet counts: a new training option never reuses a stale checkpoint
        ("datamodule.some_new_option", 1),
        ("brand_new_top_level_key", "x"),
    ]:
        assert resume.training_fingerprint(_changed(cfg, key, value)) != base, key
