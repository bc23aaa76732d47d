"""The runner refuses few-shot runs of zero-shot-only methods before building anything."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from anomaly_vlm.config import TrainConfig
from anomaly_vlm.data.sampling import ShotsError
from anomaly_vlm.tasks.config_checks import check_shots_supported


def test_zero_shot_only_method_refuses_shots() -> None:
    node = OmegaConf.create({"_target_": "anomaly_vlm.methods.anomalyclip.AnomalyCLIPModule", "layers": [24]})
    with pytest.raises(
        ShotsError, match=r"method 'anomalyclip' is zero-shot only; shots=4 .*\(use shots=0\)"
    ):
        check_shots_supported(node, 4, None)
    check_shots_supported(node, 0, None)


def test_unknown_target_fails_clearly() -> None:
    with pytest.raises(Exception, match="no_such_method"):
        check_shots_supported(
            OmegaConf.create({"_target_": "anomaly_vlm.methods.no_such_method.Module"}), 1, None
        )


def test_trained_method_without_auxiliary_data_is_rejected_before_building() -> None:
    from anomaly_vlm.data import DataError
    from anomaly_vlm.tasks.config_checks import check_training_data

    schema = OmegaConf.structured(TrainConfig)
    cfg = OmegaConf.merge(
        schema, {"method": {"_target_": "anomaly_vlm.methods.anomalyclip.AnomalyCLIPModule"}}
    )
    with pytest.raises(
        DataError,
        match="method .anomalyclip. trains on an auxiliary dataset and the test data has no published",
    ):
        check_training_data(cfg, fit=True, method_name="anomalyclip")
    check_training_data(cfg, fit=True, method_name="anomalyclip", data_name="visa")  # trains on mvtec
    check_training_data(cfg, fit=False, method_name="anomalyclip")  # evaluate: a warning only
    cfg.ckpt_path = "trained.ckpt"
    check_training_data(cfg, fit=True, method_name="anomalyclip")  # trained parameters given
    clip = OmegaConf.merge(schema, {"method": {"_target_": "anomaly_vlm.methods.clip.CLIPBaselineModule"}})
    check_training_data(clip, fit=True, method_name="clip")


def test_few_shot_only_method_refuses_zero_shot() -> None:
    node = OmegaConf.create({"_target_": "anomaly_vlm.methods.promptad.PromptADModule"})
    with pytest.raises(ShotsError, match=r"method 'promptad' is few-shot only: .*shots=0 is not supported"):
        check_shots_supported(node, 0, None)
    check_shots_supported(node, 1, None)
