"""FAPrompt's config files: the published defaults, and the demo's offline settings."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_vlm.config import register
from anomaly_vlm.tasks.config_checks import check_backbone_depths

CONF = Path(__file__).resolve().parents[4] / "conf"


def _compose(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_method_file_holds_the_official_defaults() -> None:
    cfg = _compose("method=faprompt")
    assert cfg.backbone.model == "ViT-L-14-336-quickgelu" and cfg.backbone.image_size == 518
    assert cfg.backbone.pos_embed_interpolation == "bilinear" and not cfg.backbone.pos_embed_antialias
    assert (cfg.method.blur_sigma, cfg.method.prior_tokens, cfg.method.prior_patches) == (10.0, 10, "first")
    assert (cfg.trainer.max_epochs, cfg.datamodule.train_batch_size, cfg.seed) == (15, 8, 111)
    assert (cfg.prompts.normal_context_length, cfg.prompts.abnormal_context_length) == (5, 2)
    assert (cfg.prompts.abnormal_prompts, cfg.prompts.deep_prompt_depth) == (10, 9)


def test_demo_with_faprompt_gets_the_tiny_backbones_depth_and_a_short_synthetic_training() -> None:
    cfg = _compose("experiment=demo", "method=faprompt")
    assert cfg.backbone.model == "anomaly-vlm-tiny" and cfg.prompts.deep_prompt_depth == 4
    assert cfg.trainer.max_epochs == 3
    assert cfg.train_data._target_.endswith("SyntheticAD")
    assert list(cfg.train_data.categories) == ["brick", "grass", "gravel"]
    check_backbone_depths(cfg, "tiny")  # no error: the depths fit the tiny backbone
    # other methods' demo is untouched
    assert OmegaConf.select(_compose("experiment=demo", "method=clip"), "train_data") is None
