"""``data=images`` (unlabelled) outside ``mode=predict``: the real reason comes first, before data.path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from anomaly_vlm.data import DataError
from anomaly_vlm.tasks.runner import run
from anomaly_vlm.tasks.sweep_check import check_job

CONF = Path(__file__).resolve().parents[3] / "conf"
EXPECTED = (
    r"^data=images holds unlabelled images, which have no metrics to test: score them with "
    r"`python evaluate\.py mode=predict data\.path=\.\.\.`$"
)


def _compose(name: str, *overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize(("name", "fit"), [("train", True), ("evaluate", False)])
def test_unlabelled_images_without_a_path_name_mode_predict_first(tmp_path, name, fit):
    cfg = _compose(name, "experiment=demo", "data=images", "logger=none", f"paths.output_dir={tmp_path}")
    with pytest.raises(DataError, match=EXPECTED):
        run(cfg, fit=fit)


def test_the_sweep_check_refuses_unlabelled_test_data_but_not_predictions():
    problems = check_job(_compose("train", "experiment=demo", "data=images", hydra=True), fit=True)
    assert [type(problem) for problem in problems] == [DataError]
    assert re.match(EXPECTED, str(problems[0]))
    assert check_job(_compose("evaluate", "mode=predict", "data.path=x", hydra=True), fit=False) == []
