"""Thresholds on the evaluation path: results.json's decisions block and predict's decision columns."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from anomaly_vlm.decisions import decision_metrics, mask_metrics
from anomaly_vlm.tasks import evaluate
from anomaly_vlm.tasks.runner import run

from .test_inputs import config, make_dataset


@pytest.fixture
def folder_data(tmp_path):
    return make_dataset(tmp_path / "data")


#: WinCLIP (reference memory, so shots draw references) at 64 px with two prompts: the thresholds and
#: decisions follow from whatever scores come out.
WINCLIP = ("method=winclip", "prompts=two_prompt", "backbone.image_size=64")


def test_normal_fpr_thresholds_come_from_heldout_normals_and_decide_the_test_set(tmp_path, folder_data):
    out = tmp_path / "run"
    cfg = config(out, "data=folder", f"data.root={folder_data}", "save_predictions=true", "shots=1", *WINCLIP)
    run(cfg, fit=False)
    payload = json.loads((out / "results.json").read_text())
    decisions = payload["decisions"]
    assert decisions["method"] == "normal_fpr" and not decisions["optimistic"]
    references = json.loads((out / "references.json").read_text())["references"]
    with (out / "predictions" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # Each image's defect type is the reader's (its test folder here), recorded for the analyses.
    assert [r["defect_type"] for r in rows] == [r["path"].split("/")[-2] for r in rows]
    assert {r["defect_type"] for r in rows} == {"good", "dent"}
    for category in ("widget", "gadget"):
        chosen = decisions["thresholds"][category]
        # 3 normal training images, 1 drawn as the reference: 2 held out.
        assert chosen["source"] == "heldout_normal" and chosen["num_images"] == 2
        assert len(references[category]) == 1
        scores = np.array([float(r["score"]) for r in rows if r["category"] == category])
        labels = np.array([int(r["label"]) for r in rows if r["category"] == category])
        assert decisions["per_category"][category]["accuracy"] == pytest.approx(
            decision_metrics(scores, labels, chosen["image"])["accuracy"]
        )
    maps = np.load(out / "predictions" / "widget" / "anomaly_maps.npz")
    masks = np.load(out / "predictions" / "widget" / "masks.npz")
    keys = sorted(maps.files)
    expected = mask_metrics(
        np.stack([maps[k] for k in keys]),
        np.stack([masks[k] for k in keys]),
        decisions["thresholds"]["widget"]["pixel"],
    )
    assert decisions["per_category"]["widget"]["pixel_iou"] == pytest.approx(expected["pixel_iou"])
    assert decisions["per_category"]["gadget"]["pixel_iou"] is None  # no masks


def test_f1_thresholds_are_flagged_optimistic(tmp_path, folder_data):
    out = tmp_path / "run"
    run(config(out, "data=folder", f"data.root={folder_data}", "threshold.method=f1"), fit=False)
    decisions = json.loads((out / "results.json").read_text())["decisions"]
    assert decisions["optimistic"] and decisions["thresholds"]["widget"]["source"] == "test"


def test_normal_fpr_without_heldout_images_warns_and_keeps_the_run(tmp_path, folder_data, caplog):
    # Every normal training image is a reference: the ranking metrics still come, decisions do not.
    out = tmp_path / "run"
    cfg = config(out, "data=folder", f"data.root={folder_data}", "shots=3", *WINCLIP)
    with caplog.at_level("WARNING"):
        run(cfg, fit=False)
    assert any("all are references (shots=3)" in r.getMessage() for r in caplog.records)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["mean"]["image_auroc"] is not None
    assert all(value is None for value in results["decisions"]["per_category"]["widget"].values())


def test_predict_writes_decisions_area_and_masks(tmp_path, folder_data):
    out = tmp_path / "pred"
    images = folder_data / "widget" / "test"
    reference_dir = folder_data / "widget" / "train" / "good"
    cfg = config(
        out,
        "mode=predict",
        f"data.path={images}",
        f"data.reference_dir={reference_dir}",
        "data.category=widget",
        "threshold.target_fpr=0.0",
        name="evaluate",
    )
    evaluate(cfg)
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    chosen = json.loads((out / "predict.json").read_text())["thresholds"]["widget"]
    assert chosen["num_images"] == 3  # zero-shot: every reference_dir image is held out
    for row in rows:
        assert row["decision"] == ("defect" if float(row["score"]) > chosen["image"] else "ok")
        name = row["path"].split("test/")[1].replace("/", "__")
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png")) > 0
        raw = np.asarray(Image.open(out / "heatmaps" / f"{name}_map.tiff"))
        assert np.array_equal(mask, raw > chosen["pixel"])
        assert float(row["defect_area"]) == pytest.approx(mask.mean(), abs=1e-6)


def test_predict_without_threshold_source_leaves_decisions_empty(tmp_path, folder_data):
    out = tmp_path / "pred"
    cfg = config(out, "mode=predict", f"data.path={folder_data / 'widget' / 'test'}", name="evaluate")
    evaluate(cfg)
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["decision"] == "" and row["defect_area"] == "" for row in rows)
    fixed = config(
        tmp_path / "fixed",
        "mode=predict",
        f"data.path={folder_data / 'widget' / 'test'}",
        "threshold.method=fixed",
        "threshold.image=-1",
        "threshold.pixel=2",
        name="evaluate",
    )
    evaluate(fixed)
    with (tmp_path / "fixed" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["decision"] == "defect" and float(row["defect_area"]) == 0.0 for row in rows)
