"""The runner refuses few-shot runs of zero-shot-only methods before building anything."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from anomaly_vlm.tasks.runner import check_shots


def test_zero_shot_only_method_refuses_shots() -> None:
    node = OmegaConf.create({"_target_": "anomaly_vlm.methods.anomalyclip.AnomalyCLIPModule", "layers": [24]})
    with pytest.raises(
        ValueError, match=r"method 'anomalyclip' is zero-shot only; got shots=4 \(use shots=0\)"
    ):
        check_shots(node, 4)
    check_shots(node, 0)


def test_unknown_target_fails_clearly() -> None:
    with pytest.raises(Exception, match="no_such_method"):
        check_shots(OmegaConf.create({"_target_": "anomaly_vlm.methods.no_such_method.Module"}), 1)
