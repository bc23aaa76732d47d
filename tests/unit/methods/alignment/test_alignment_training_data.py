"""The training-free alignment strategies run without auxiliary training data; only those that train ask."""

from __future__ import annotations

import pytest
from composed import compose_config

from anomaly_vlm.data import DataError
from anomaly_vlm.tasks.config_checks import check_training_data
from anomaly_vlm.tasks.training_data import trains_on_auxiliary_data, use_protocol_training_data

TRAINING_FREE = ("none", "windows", "surgery")
TRAINED = ("linear", "text_prompts", "both_prompts", "surgery+text_prompts", "linear+both_prompts")


def _compose(*overrides: str):
    return compose_config("train", ["experiment=demo", "method=alignment", *overrides])


@pytest.mark.parametrize("alignment", TRAINING_FREE)
def test_training_free_strategies_need_no_train_data(alignment):
    cfg = _compose(f"method.alignment={alignment}")
    assert not trains_on_auxiliary_data(cfg)
    check_training_data(cfg, True, "alignment", "synthetic")  # no error
    # Nor is the published partner composed for them on MVTec AD.
    mvtec = _compose(f"method.alignment={alignment}", "data=mvtec")
    assert use_protocol_training_data(mvtec, {"method": "alignment", "data": "mvtec"}, fit=True) is None
    assert not mvtec.train_data


@pytest.mark.parametrize("alignment", TRAINED)
def test_strategies_that_train_name_the_missing_train_data(alignment):
    cfg = _compose(f"method.alignment={alignment}")
    assert trains_on_auxiliary_data(cfg)
    with pytest.raises(DataError, match="set train_data=<"):
        check_training_data(cfg, True, "alignment", "synthetic")


def test_an_unknown_strategy_counts_as_training_so_its_own_check_reports_it():
    assert trains_on_auxiliary_data(_compose("method.alignment=bogus"))
