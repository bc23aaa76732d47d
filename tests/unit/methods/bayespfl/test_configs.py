"""Bayes-PFL's config files: the published defaults, the cross-dataset experiments and the demo."""

from __future__ import annotations

import pytest
from composed import compose_config

from anomaly_vlm.config import register
from anomaly_vlm.tasks.config_checks import check_backbone_depths


def _compose(*overrides: str):
    register()
    return compose_config("train", overrides)


def test_method_file_holds_the_official_defaults() -> None:
    cfg = _compose("method=bayespfl")
    assert (
        cfg.backbone.model == "ViT-L-14-336"
        and cfg.backbone.image_size == 518
        and not cfg.backbone.quick_gelu
    )
    assert cfg.backbone.pos_embed_interpolation == "bicubic" and cfg.backbone.pos_embed_antialias
    method = cfg.method
    assert (method.prompt_num, method.context_length, method.state_length, method.num_flows) == (3, 5, 5, 10)
    assert (method.sample_num, method.sample_seed, method.blur_sigma) == (10, 333, 8.0)
    assert (method.lr_prompt, method.lr_temperature, method.lr_flow, method.lr_linear) == (
        1e-3,
        0.01,
        1e-3,
        1e-4,
    )
    assert (cfg.trainer.max_epochs, cfg.datamodule.train_batch_size, cfg.seed) == (30, 32, 333)
    # Stage 2: the last 5 epochs (the official shortest stage 2), optimizer_stage2's constant 1e-4.
    assert (method.stage2_epochs, method.lr_stage2, method.augment, method.augment_seed) == (
        5,
        1e-4,
        True,
        333,
    )
    seeded = _compose("method=bayespfl", "seed=7").method
    assert seeded.sample_seed == seeded.augment_seed == 7  # the run seed seeds the samples and augmentation


@pytest.mark.parametrize(
    ("experiment", "data", "train_data", "mosaic"),
    [
        ("bayespfl_mvtec", "mvtec", "visa", 0.0),
        ("bayespfl_visa", "visa", "mvtec", 0.4),
        ("bayespfl_zeroshot_suite", "visa", "mvtec", 0.4),
    ],
)
def test_cross_dataset_experiments(experiment: str, data: str, train_data: str, mosaic: float) -> None:
    cfg = _compose(f"experiment={experiment}")
    assert cfg.method._target_.endswith("BayesPFLModule")
    assert cfg.data._target_ == _compose(f"data={data}").data._target_
    assert cfg.train_data._target_ == _compose(f"train_data={train_data}").train_data._target_
    assert cfg.datamodule.train_mosaic_probability == mosaic
    # The official mosaic: four anomalous images of the class (combine_img).
    assert cfg.datamodule.train_mosaic_tiles == ("anomalous" if mosaic else "any")


def test_demo_with_bayespfl_gets_a_short_synthetic_training() -> None:
    cfg = _compose("experiment=demo", "method=bayespfl")
    assert cfg.backbone.model == "anomaly-vlm-tiny" and cfg.trainer.max_epochs == 3
    assert cfg.train_data._target_.endswith("SyntheticAD") and cfg.method.sample_num == 3
    assert cfg.method.stage2_epochs == 1  # 2 epochs of stage 1, 1 of stage 2
    assert _compose("experiment=bayespfl_synthetic").method.stage2_epochs == 1
    check_backbone_depths(cfg, "tiny")
