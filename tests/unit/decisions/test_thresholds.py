"""Threshold choices and decision metrics, checked against brute force."""

from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_vlm.callbacks.scoring import CategoryResult
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.decisions import (
    CategoryThresholds,
    ThresholdError,
    ThresholdSettings,
    decision_metrics,
    f1_threshold,
    mask_metrics,
    normal_fpr_threshold,
)
from anomaly_vlm.decisions.consumers import CategoryDecisions, heldout_normals, same_file
from anomaly_vlm.decisions.outputs import decide
from anomaly_vlm.methods.contract import Prediction

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.5])
def test_normal_fpr_threshold_keeps_at_most_target_above(target):
    scores = RNG.normal(size=1000)
    scores[:50] = scores[0]  # ties
    threshold = normal_fpr_threshold(scores, target)
    above = np.mean(scores > threshold)
    assert above <= target + 1e-12
    # The smallest such threshold: the next observed score down would exceed the target.
    lower = scores[scores < threshold]
    if lower.size:
        assert np.mean(scores > lower.max()) > target


def test_normal_fpr_threshold_zero_target_is_the_maximum():
    assert normal_fpr_threshold([0.1, 0.7, 0.3], 0.0) == 0.7


def test_f1_threshold_is_f1_optimal_by_brute_force():
    scores = np.round(RNG.random(200), 2)  # many ties
    labels = RNG.random(200) < 0.3 + 0.5 * scores
    threshold = f1_threshold(scores, labels)

    def f1(t):
        predicted = scores > t
        tp = np.sum(predicted & labels)
        return 2 * tp / (predicted.sum() + labels.sum())

    best = max(f1(t) for t in np.r_[np.unique(scores), -1.0])
    assert f1(threshold) == pytest.approx(best)


def test_f1_threshold_needs_anomalies():
    with pytest.raises(ThresholdError, match="needs anomalous"):
        f1_threshold([0.1, 0.2], [0, 0])


def test_decision_metrics_by_hand():
    metrics = decision_metrics([0.9, 0.8, 0.2, 0.6, 0.1], [1, 1, 1, 0, 0], threshold=0.5)
    # predicted defect: 0.9, 0.8, 0.6 -> tp=2, fp=1, fn=1, tn=1
    assert metrics == pytest.approx({"accuracy": 3 / 5, "precision": 2 / 3, "recall": 2 / 3, "fpr": 1 / 2})
    assert decision_metrics([0.1], [1], 0.5)["precision"] is None  # nothing flagged


def test_mask_metrics_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :2] = 1.0  # 4 predicted pixels
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :1] = True  # 2 true, both predicted
    masks[1, 3, 3] = True  # 1 missed
    metrics = mask_metrics(maps, masks, 0.5)
    assert metrics["pixel_iou"] == pytest.approx(2 / 5)
    assert metrics["pixel_dice"] == pytest.approx(4 / 7)


def test_settings_reject_bad_values():
    with pytest.raises(ThresholdError, match="threshold.method=median"):
        ThresholdSettings.from_config({"method": "median"})
    with pytest.raises(ThresholdError, match="target_fpr=1.5"):
        ThresholdSettings.from_config({"target_fpr": 1.5})
    with pytest.raises(ThresholdError, match="threshold.image"):
        ThresholdSettings.from_config({"method": "fixed"})
    with pytest.raises(ThresholdError, match="threshold.fpr is not"):
        ThresholdSettings.from_config({"fpr": 0.1})
    assert ThresholdSettings.from_config(None).method == "normal_fpr"


def test_heldout_normals_exclude_references():
    samples = [Sample(f"{i}.png", "c", 0, "good") for i in range(5)]
    left = heldout_normals(samples, samples[:2], "c")
    assert [s.path for s in left] == ["2.png", "3.png", "4.png"]
    assert len(heldout_normals(samples, [], "c", max_images=2)) == 2
    assert heldout_normals(samples, samples, "c") == []  # all are references: warned, no decisions


def test_heldout_normals_exclude_training_images_however_spelt(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    samples = [Sample(str(tmp_path / f"{i}.png"), "c", 0, "good") for i in range(4)]
    # The method trained on 1 and 2, listed relative to the working directory.
    trained = {same_file("1.png"), same_file("./2.png")}
    left = heldout_normals(samples, samples[:1], "c", trained_on=trained)
    assert [Path(s.path).name for s in left] == ["3.png"]
    with caplog.at_level("WARNING"):
        everything = {same_file(s.path) for s in samples}
        assert heldout_normals(samples, samples[:1], "c", trained_on=everything) == []
    assert "3 trained the method (train_data) and 1 are references: no decisions" in caplog.text


def _result(scores, labels, maps, masks):
    return CategoryResult(
        "c",
        [f"{i}.png" for i in range(len(scores))],
        ["x"] * len(scores),
        torch.tensor(labels),
        None if masks is None else torch.tensor(masks),
        Prediction(torch.tensor(scores, dtype=torch.float32), torch.tensor(maps, dtype=torch.float32)),
        {},
    )


def test_f1_decisions_on_the_test_set_are_flagged_optimistic():
    maps = RNG.random((4, 8, 8))
    masks = maps > 0.8
    result = _result([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], maps, masks)
    decisions = CategoryDecisions(ThresholdSettings(method="f1"))
    decisions.consume(result, None)
    row = decisions.results["c"]
    assert row["accuracy"] == 1.0 and row["fpr"] == 0.0
    assert row["pixel_iou"] == pytest.approx(1.0)  # the masks are a threshold of the maps
    summary = decisions.summary()
    assert summary["optimistic"] and summary["thresholds"]["c"]["source"] == "test"


def test_given_thresholds_and_per_image_decision():
    result = _result([0.9, 0.1], [1, 0], np.zeros((2, 4, 4)), None)
    chosen = CategoryThresholds(0.5, 0.5, "normal_fpr", "heldout_normal")
    decisions = CategoryDecisions(ThresholdSettings(), {"c": chosen})
    decisions.consume(result, None)
    assert decisions.results["c"]["recall"] == 1.0 and decisions.results["c"]["pixel_iou"] is None
    assert not decisions.summary()["optimistic"]
    one = np.zeros((4, 4))
    one[0, :2] = 1.0
    decision = decide(0.7, one, chosen)
    assert decision.decision == "defect" and decision.defect_area == pytest.approx(2 / 16)
    assert decide(0.5, one, chosen).decision == "ok"  # strictly above is a defect
