"""``python train.py -m experiment=demo method=aaclip`` trains offline as experiment=aaclip_synthetic does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_vlm.tasks.config_checks import check_training_data

CONF = Path(__file__).resolve().parents[4] / "conf"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_the_demo_takes_the_synthetic_experiments_training():
    demo = _compose("experiment=demo", "method=aaclip")
    synthetic = _compose("experiment=aaclip_synthetic")
    assert demo.backbone.model == "anomaly-vlm-tiny"
    assert OmegaConf.to_container(demo.train_data) == OmegaConf.to_container(synthetic.train_data)
    assert demo.trainer.max_epochs == synthetic.trainer.max_epochs == 3
    assert demo.datamodule.train_batch_size == synthetic.datamodule.train_batch_size
    for option in ("text_epochs", "text_batch_size", "text_lr", "blur_kernel", "blur_sigma"):
        assert demo.method[option] == synthetic.method[option], option
    check_training_data(demo, True, "aaclip", "synthetic")  # nothing missing: it trains on the textures
