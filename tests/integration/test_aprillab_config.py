"""Composition of the APRIL-GAN configs (fast; no model is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_method_defaults_are_the_published_setting():
    cfg = _compose("method=aprillab")
    assert cfg.backbone.model == "ViT-L-14-336" and cfg.backbone.image_size == 518
    assert cfg.backbone.quick_gelu is False and cfg.backbone.pretrained == "openai"
    assert cfg.prompts.name == "aprilgan"
    assert (
        len(cfg.prompts.normal_states),
        len(cfg.prompts.anomalous_states),
        len(cfg.prompts.templates),
    ) == (
        7,
        5,
        35,
    )
    assert cfg.method.lr == 0.001 and list(cfg.method.betas) == [0.5, 0.999]
    assert cfg.seed == 111 and cfg.reference_seed == 111 and cfg.datamodule.train_batch_size == 8
    assert cfg.hydra.sweeper.params.reference_seed == "range(0,3)"
    # A command-line choice of another group still wins over the method file's defaults.
    assert _compose("method=aprillab", "backbone=tiny", "prompts=two_prompt").prompts.name == "two_prompt"


def test_synthetic_experiment_trains_and_tests_on_disjoint_categories():
    cfg = _compose("experiment=aprillab_synthetic")
    assert cfg.backbone.model == "anomaly-vlm-tiny"
    assert not set(cfg.data.categories) & set(cfg.train_data.categories)
    assert cfg.datamodule.train_mosaic_probability == 0.0


@pytest.mark.parametrize(
    ("experiment", "data", "train_data", "epochs", "mosaic"),
    [("aprillab_mvtec", "mvtec", "visa", 15, 0.0), ("aprillab_visa", "visa", "mvtec", 3, 0.2)],
)
def test_published_experiments(experiment, data, train_data, epochs, mosaic):
    if not (CONF / "data" / "visa.yaml").is_file() or not (CONF / "train_data" / "visa.yaml").is_file():
        pytest.skip("the VisA data configs (conf/data/visa.yaml, conf/train_data/visa.yaml) are not here yet")
    cfg = _compose(f"experiment={experiment}")
    choices = cfg.hydra.runtime.choices
    assert (choices["data"], choices["train_data"], choices["method"]) == (data, train_data, "aprillab")
    assert cfg.trainer.max_epochs == epochs and cfg.datamodule.train_mosaic_probability == mosaic
    assert OmegaConf.select(cfg, "backbone.model") == "ViT-L-14-336"
