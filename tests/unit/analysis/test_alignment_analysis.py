"""The alignment analysis: its sweeps, its strategy x metric grid and the gain attribution computed from the
numbers (results.json fixtures; no job runs)."""

from __future__ import annotations

import json

from anomaly_vlm.analysis.alignment import gain_share
from anomaly_vlm.analysis.analyses import ANALYSES, CROSS_METHODS, EFFICIENCY_METHODS
from anomaly_vlm.analysis.run import run_analyses
from anomaly_vlm.methods.alignment import PUBLISHED_ALIGNMENT, STRATEGIES


def test_the_sweeps_run_every_strategy_once_and_the_published_methods_beside_them():
    sweeps = {sweep.part: sweep for sweep in ANALYSES["alignment"].sweeps("tiny")}
    grid = sweeps.pop("alignment-grid").overrides
    assert f"method.alignment={','.join(STRATEGIES)}" in grid
    assert "method=alignment" in grid and "shots=0" in grid
    # Per-image time is the model's, never a cache read.
    assert all("feature_cache.enabled=false" in sweep.overrides for sweep in [*sweeps.values()]) and (
        "feature_cache.enabled=false" in grid
    )
    assert set(sweeps) == {f"alignment-{m}" for m in ("clip", *PUBLISHED_ALIGNMENT)}
    # The controlled configuration is no method of its own in the other analyses.
    assert "alignment" not in EFFICIENCY_METHODS and "alignment" not in CROSS_METHODS


def test_the_grid_and_the_attribution_come_from_the_numbers(results, tmp_path):
    # none 60, surgery 62, text_prompts 64, surgery+text_prompts 70; CLIP 50, AnomalyCLIP 70.
    for strategy, score, trainable in (
        ("none", 0.60, 0),
        ("surgery", 0.62, 0),
        ("text_prompts", 0.64, 100),
        ("surgery+text_prompts", 0.70, 100),
    ):
        efficiency = {"trainable_parameters": trainable, "ms_per_image": 3.0}
        if trainable:
            efficiency["train_seconds"] = 12.5
        results.write(
            "alignment-grid", method="alignment", score=score, config={"method.alignment": strategy},
            efficiency=efficiency,
        )  # fmt: skip
    results.write("alignment-clip", method="clip", score=0.50)
    results.write("alignment-anomalyclip", method="anomalyclip", score=0.70)
    sections, _, _ = run_analyses(["alignment"], "tiny", tmp_path / "reports", results.root, run=False)
    section = sections[0]
    grid = json.loads(section.figures[0].provenance.read_text())["points"]
    cells = {(p["series"], p["metric"]): p["mean"] for p in grid}
    assert cells[("surgery+text_prompts", "image_auroc")] == 70.0
    assert cells[("none", "train_seconds")] == 0.0  # trained nothing
    assert cells[("text_prompts", "train_seconds")] == 12.5
    assert [row[0] for row in section.tables[0].rows] == [
        "none",
        "surgery",
        "text_prompts",
        "surgery+text_prompts",
    ]
    # AnomalyCLIP gains 20 points over CLIP; its alignment gains 10 over 'none': half of its gain.
    attribution = section.tables[1]
    image = next(row for row in attribution.rows if row[0] == "anomalyclip" and row[2] == "image AUROC")
    assert image[1:] == ["surgery+text_prompts", "image AUROC", "+20.0", "+10.0", "50%"]
    sentence = next(note for note in section.notes if note.startswith("anomalyclip:"))
    assert "accounts for 50% of it" in sentence and "surgery +2.0, text_prompts +4.0" in sentence


def test_adaclips_row_is_its_preset_and_its_grid_parts_are_shown_alone(results, tmp_path):
    assert PUBLISHED_ALIGNMENT["adaclip"] == "adaclip" and "adaclip" in STRATEGIES
    for strategy, score in (("none", 0.60), ("linear", 0.63), ("adaclip", 0.72)):
        trainable = 0 if strategy == "none" else 10
        results.write(
            "alignment-grid", method="alignment", score=score, config={"method.alignment": strategy},
            efficiency={"trainable_parameters": trainable, "ms_per_image": 3.0},
        )  # fmt: skip
    results.write("alignment-clip", method="clip", score=0.50)
    results.write("alignment-adaclip", method="adaclip", score=0.74)
    sections, _, _ = run_analyses(["alignment"], "tiny", tmp_path / "reports", results.root, run=False)
    sentence = next(note for note in sections[0].notes if note.startswith("adaclip:"))
    assert "its alignment alone (adaclip) is +12.0 against 'none'" in sentence
    assert "Its parts alone: linear +3.0" in sentence


def test_a_share_is_stated_only_where_it_reads_as_one():
    # WinCLIP at tiny scale: the method gains 26.6 points over CLIP, its windows alone lose 22.9 against
    # 'none'; "-86%" of a gain is no share.
    assert gain_share(26.6, -22.9) == (
        "0%",
        "its alignment alone does not help",
    )
    cell, text = gain_share(10.0, 14.0)
    assert cell == "100%" and "gains more than the whole method" in text and "cost 4.0 points" in text
    assert gain_share(20.0, 10.0) == ("50%", "its alignment accounts for 50% of it")
    assert gain_share(0.0, 5.0)[0] == "—" and gain_share(-3.0, 5.0)[0] == "—"
