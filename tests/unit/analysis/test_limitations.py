"""The limitations analysis: defect types, sizes, categories, corruptions, gallery, known weaknesses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_vlm.analysis.analyses import ANALYSES
from anomaly_vlm.analysis.limitations import (
    category_section,
    defect_type_results,
    findings_of,
    kind_of,
    region_results,
    robustness,
    size_bins,
    weaknesses,
)
from anomaly_vlm.analysis.records import load_records
from anomaly_vlm.analysis.run import run_analyses
from anomaly_vlm.analysis.selection import select, selection_rows
from anomaly_vlm.reporting.predictions import PredictionWriter, read_predictions

from .conftest import add_predictions


def _category(tmp_path, labels, scores, kinds, maps=None, masks=None):
    writer = PredictionWriter(tmp_path / "predictions")
    paths = [f"/d/c/test/{kind}/{i}.png" for i, kind in enumerate(kinds)]
    writer.add(paths, ["c"] * len(kinds), labels, None, maps, masks, kinds)
    writer.finish_category("c", np.asarray(scores, float))
    return read_predictions(tmp_path / "predictions")["c"]


def test_each_defect_type_is_measured_against_the_normal_images(tmp_path):
    predictions = _category(
        tmp_path,
        labels=[0, 0, 1, 1, 1],
        scores=[0.3, 0.4, 0.9, 0.8, 0.1],
        kinds=["good", "good", "logical_anomalies", "logical_anomalies", "structural_anomalies"],
    )
    results = {r.defect_type: r for r in defect_type_results(predictions, image_threshold=0.5)}
    assert set(results) == {"logical_anomalies", "structural_anomalies"}
    assert results["logical_anomalies"].image_auroc == pytest.approx(100.0)
    assert results["logical_anomalies"].recall == 1.0 and results["logical_anomalies"].images == 2
    assert results["structural_anomalies"].image_auroc == pytest.approx(0.0)
    assert results["structural_anomalies"].recall == 0.0
    assert defect_type_results(predictions, None)[0].recall is None


def test_regions_are_binned_by_area_with_recall_and_overlap_at_the_pixel_threshold(tmp_path):
    size = 100
    mask = np.zeros((size, size), bool)
    mask[0:2, 0:2] = True  # 4 px = 0.04 %
    mask[10:15, 10:20] = True  # 50 px = 0.5 %
    mask[30:50, 30:55] = True  # 500 px = 5 %
    mask[60:100, 60:100] = True  # 1600 px = 16 %
    anomaly_map = np.zeros((size, size), np.float32)
    anomaly_map[10:15, 10:12] = 1.0  # 10 of 50 px above: overlap 0.2, not found
    anomaly_map[30:50, 30:50] = 1.0  # 400 of 500: found
    anomaly_map[60:100, 60:100] = 1.0  # all: found
    predictions = _category(
        tmp_path, [0, 1], [0.1, 0.9], ["good", "dent"], np.stack([np.zeros_like(anomaly_map), anomaly_map]),
        np.stack([np.zeros_like(mask), mask]),
    )  # fmt: skip
    regions = region_results(predictions, pixel_threshold=0.5)
    assert sorted(round(r.fraction, 4) for r in regions) == [0.0004, 0.005, 0.05, 0.16]
    bins = {b.label: b for b in size_bins(regions)}
    assert list(bins) == ["< 0.1 %", "0.1–1 %", "1–10 %", "> 10 %"]
    assert bins["< 0.1 %"].recall == 0.0 and bins["< 0.1 %"].overlap == 0.0
    assert bins["0.1–1 %"].recall == 0.0 and bins["0.1–1 %"].overlap == pytest.approx(0.2)
    assert bins["1–10 %"].recall == 1.0 and bins["1–10 %"].overlap == pytest.approx(0.8)
    assert bins["> 10 %"].recall == 1.0
    assert all(r.overlap is None for r in region_results(predictions, pixel_threshold=None))


def test_corrupted_runs_are_paired_with_the_clean_run_of_the_same_configuration(results):
    results.write("limitations-clip-corruptions", method="clip", score=0.9)
    results.write(
        "limitations-clip-corruptions",
        method="clip",
        score=0.7,
        config={"datamodule.test_corruption": "blur", "datamodule.test_corruption_strength": 2},
    )
    results.write(
        "limitations-clip-corruptions",
        method="clip",
        score=0.6,
        config={
            "datamodule.test_corruption": "blur",
            "datamodule.test_corruption_strength": 2,
            "backbone.image_size": 96,
        },
    )  # no clean twin at 96 px: no drop
    records = load_records([results.root / "train" / "multiruns"])
    drops = robustness(records)
    assert [(d.corruption, d.strength) for d in drops] == [("blur", 2)]
    assert drops[0].image_drop == pytest.approx(20.0)
    assert "blur at strength 2 costs 20.0 image AUROC points" in weaknesses([], drops)["clip"][0]


def test_known_weaknesses_name_small_defects_and_weak_types_and_reach_the_selection_table(results):
    path = results.write("limitations-winclip", method="winclip", score=0.75, efficiency={"ms_per_image": 3})
    for _ in range(2):  # three small regions are needed before a size bin counts as a weakness
        add_predictions(path)  # re-written: one category
    records = load_records([results.root / "train" / "multiruns"])
    found = findings_of(records[0])
    assert found is not None and {t.defect_type for t in found.types} == {"scratch", "hole"}
    listed = weaknesses([found], [])
    assert listed == {"winclip": ["weak on 'scratch' (disc): image AUROC 0.0 vs 75.0 overall"]}
    header, rows, _ = selection_rows(select(records), {"winclip": listed["winclip"]})
    assert header[-1] == "known weaknesses of the winner's method"
    assert "weak on 'scratch'" in rows[0][-1]
    assert selection_rows(select(records), {})[1][0][-1] == "not measured by the limitations analysis"


def test_categories_are_ranked_hardest_first_objects_against_textures(results, tmp_path):
    path = results.write("limitations-clip", method="clip", score=0.8)
    payload = json.loads(path.read_text())
    payload["metrics"]["per_category"] = {
        "disc": {"image_auroc": 0.9},
        "brick": {"image_auroc": 0.5},
        "nut": {"image_auroc": 0.7},
    }
    path.write_text(json.dumps(payload))
    _, tables = category_section(load_records([results.root / "train" / "multiruns"]), tmp_path / "out")
    ranked = [(row[2], row[3], row[4]) for row in tables[0].rows]
    assert ranked == [("1", "brick", "texture"), ("2", "nut", "object"), ("3", "disc", "object")]
    assert kind_of("carpet", "mvtec") == "texture" and kind_of("x", "dtd_synthetic") == "texture"


def test_the_report_holds_the_limitations_section_with_gallery_images(results, tmp_path):
    path = results.write("limitations-clip", method="clip", score=0.8)
    add_predictions(path)  # the clean twin of the corrupted run below
    results.write(
        "limitations-clip-corruptions",
        method="clip",
        score=0.5,
        config={"datamodule.test_corruption": "noise", "datamodule.test_corruption_strength": 3},
    )
    sections, _, report = run_analyses(
        ["limitations"], "tiny", tmp_path / "reports", results.root, run=False, report=True
    )
    section = sections[0]
    gallery = [f for f in section.figures if f.title.startswith("Gallery:")]
    assert len(gallery) == 1 and gallery[0].png.is_file()
    points = json.loads(gallery[0].provenance.read_text())["points"]
    # Top row: the lowest-scored anomalous images first; bottom row: the highest-scored normal ones.
    assert [p["x"] for p in points] == [
        "test/scratch/002.png", "test/hole/003.png", "test/good/001.png", "test/good/000.png"
    ]  # fmt: skip
    titles = {t.title.split(":")[0].split(" (")[0] for t in section.tables}
    assert {"Defect types", "Defect size", "Corruptions", "Known weaknesses per method"} <= titles
    text = report.read_text()
    assert "id='limitations'" in text and 'alt="Gallery: clip, disc' in text
    assert "noise at strength 3 costs 30.0 image AUROC points" in text


def test_the_sweeps_keep_maps_and_test_every_corruption_at_three_strengths():
    sweeps = {s.part: s for s in ANALYSES["limitations"].sweeps("tiny")}
    assert "save_predictions=true" in sweeps["limitations-clip"].overrides
    corrupted = sweeps["limitations-clip-corruptions"].overrides
    assert "datamodule.test_corruption=rotation,brightness_contrast,blur,jpeg,noise" in corrupted
    assert "datamodule.test_corruption_strength=1,2,3" in corrupted
    published = {s.part for s in ANALYSES["limitations"].sweeps("published")}
    assert "limitations-winclip-types" in published
    # The tiny selection table's winners are training-free methods (AnomalyDINO, MuSc with random weights):
    # each has its own limitations run, so the known-weaknesses column is measured for it.
    for method in ("anomalydino", "musc", "clip", "winclip", "promptad", "aprillab", "anomalyclip"):
        assert f"limitations-{method}" in sweeps


def test_other_analyses_runs_that_kept_their_maps_are_read_too_but_set_no_weakness(results, tmp_path):
    own = results.write("limitations-clip", method="clip", score=0.8)
    add_predictions(own)
    borrowed = results.write("layers-musc", method="musc", score=0.7, config={"method.layers": [2]})
    add_predictions(borrowed)
    results.write("layers-musc", method="musc", score=0.6, config={"method.layers": [4]})  # saved no maps
    section = ANALYSES["limitations"]
    sections, _, _ = run_analyses(["limitations"], "tiny", tmp_path / "reports", results.root, run=False)
    assert sorted(r.source.split("/")[-3] for r in sections[0].records) == [
        "analysis-tiny-layers-musc",
        "analysis-tiny-limitations-clip",
    ]
    galleries = [f.title for f in sections[0].figures if f.title.startswith("Gallery:")]
    assert len(galleries) == 2 and any("musc [analysis-tiny-layers-musc/" in title for title in galleries)
    assert set(sections[0].weaknesses) == {"clip"}  # the standard setting only
    assert section.borrowed(sections[0].records[0], "tiny") != section.borrowed(
        sections[0].records[1], "tiny"
    )
