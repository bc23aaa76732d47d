"""A method that trains on auxiliary data, given none, trains on the published partner of its test data.

``python train.py method=aprillab shots=4 -m`` (data=mvtec by default) must run as typed: it trains on
the VisA test split, exactly as ``train_data=visa`` would, and says so in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from composed import compose_config, method_file
from omegaconf import OmegaConf

from anomaly_vlm.data import DataError
from anomaly_vlm.tasks.config_checks import check_training_data
from anomaly_vlm.tasks.sweep_check import check_job
from anomaly_vlm.tasks.training_data import trains_on_auxiliary_data, use_protocol_training_data

CONF = Path(__file__).resolve().parents[3] / "conf"
METHODS = sorted(path.stem for path in (CONF / "method").glob("*.yaml"))


def _compose(*overrides: str, hydra: bool = False):
    return compose_config("train", overrides, hydra=hydra)


#: At each method's default options (method=alignment's default strategy is training-free), read from the
#: method files without composing: parametrize lists are built at collection.
TRAINED = [method for method in METHODS if trains_on_auxiliary_data(OmegaConf.create(method_file(method)))]


def test_the_methods_that_train_on_auxiliary_data_are_covered():
    assert {"aprillab", "anomalyclip", "adaclip"} <= set(TRAINED)
    # The composed configs agree: the test below composes every method listed (and fails unless it trains),
    # and none of the others trains.
    others = [method for method in METHODS if method not in TRAINED]
    assert not [method for method in others if trains_on_auxiliary_data(_compose(f"method={method}"))]


#: Whether a method trains (and so gets a partner) does not depend on the direction, nor the partner on the
#: method: every trained method at the default data=mvtec, and one of them the other way round.
CASES = [(method, "mvtec", "visa") for method in TRAINED] + [("aprillab", "visa", "mvtec")]


@pytest.mark.parametrize(("method", "data", "partner"), CASES)
def test_training_data_defaults_to_the_published_partner(method, data, partner, caplog):
    cfg = _compose(f"method={method}", f"data={data}")
    names = {"method": method, "data": data, "train_data": None}
    with caplog.at_level(logging.INFO, logger="anomaly_vlm.tasks.training_data"):
        assert use_protocol_training_data(cfg, names, fit=True) == partner
    explicit = _compose(f"method={method}", f"data={data}", f"train_data={partner}")
    assert OmegaConf.to_container(cfg.train_data) == OmegaConf.to_container(explicit.train_data)
    assert cfg.train_data.root == explicit.train_data.root  # interpolations resolve in the job's config
    assert names["train_data"] == partner
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"train_data={partner}: method '{method}' trains on")
    assert f"protocol for data={data} trains on the" in lines[0]
    check_training_data(cfg, True, method, data)


def test_given_training_data_trained_parameters_or_evaluation_are_left_alone():
    names = {"method": "aprillab", "data": "mvtec", "train_data": None}
    for overrides, fit in (
        (["train_data=synthetic"], True),
        (["ckpt_path=trained.ckpt"], True),
        ([], False),
        (["method=clip"], True),
    ):
        cfg = _compose("method=aprillab", "data=mvtec", *overrides)
        before = OmegaConf.to_container(cfg)
        assert use_protocol_training_data(cfg, dict(names), fit=fit) is None
        assert OmegaConf.to_container(cfg) == before


def test_test_data_without_a_partner_still_asks_and_lists_the_values():
    cfg = _compose("method=aprillab", "data=synthetic")
    names = {"method": "aprillab", "data": "synthetic", "train_data": None}
    assert use_protocol_training_data(cfg, names, fit=True) is None
    with pytest.raises(DataError) as error:
        check_training_data(cfg, True, "aprillab", "synthetic")
    message = str(error.value)
    assert message.startswith(
        "method 'aprillab' trains on an auxiliary dataset and data=synthetic has no published partner"
    )
    assert "set train_data=<btad|dagm|" in message and "|folder|" in message and "|visa>" in message


def test_the_sweep_check_accepts_the_headline_command_and_refuses_data_without_partner():
    assert check_job(_compose("method=aprillab", "shots=4", hydra=True), fit=True) == []
    problems = check_job(_compose("method=anomalyclip", "data=folder", hydra=True), fit=True)
    assert [type(problem) for problem in problems] == [DataError]
    assert "data=folder has no published partner" in str(problems[0])
