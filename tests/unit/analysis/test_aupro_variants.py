"""Exact and official AUPRO are never one column or one panel; every table and figure names the variant."""

from __future__ import annotations

import csv
import json

import pytest

from anomaly_vlm.analysis.analyses import ANALYSES
from anomaly_vlm.analysis.figures import pareto_figure
from anomaly_vlm.analysis.records import load_records
from anomaly_vlm.analysis.run import analysis_records

OFFICIAL = {"metrics.aupro": "official"}


def _prompt_runs(results) -> None:
    # As make analysis-prompts: APRIL-GAN and AnomalyCLIP compute the official AUPRO, CLIP/WinCLIP exact.
    results.write("prompts-winclip", method="winclip", score=0.7, pixel=0.4)
    results.write("prompts-aprillab", method="aprillab", score=0.8, pixel=0.6, config=OFFICIAL)


def test_prompts_table_has_one_aupro_column_per_variant(results, tmp_path) -> None:
    _prompt_runs(results)
    section = ANALYSES["prompts"].render(analysis_records("prompts", "tiny", results.root), tmp_path, "tiny")
    (table,) = section.tables
    assert "P-AUPRO" not in table.header
    exact, official = table.header.index("P-AUPRO (exact)"), table.header.index("P-AUPRO (official)")
    cells = {row[0]: (row[exact], row[official]) for row in table.rows}
    assert cells == {"winclip": ("40.0", "—"), "aprillab": ("—", "60.0")}
    rows = {row["method"]: row for row in csv.DictReader(table.csv.open())}
    assert rows["aprillab"]["pixel_aupro@official_mean"] == "60.000"
    assert rows["aprillab"]["pixel_aupro@exact_mean"] == ""
    assert "P-AUPRO (official)" in table.markdown.read_text()


def test_a_single_variant_is_named_too(results, tmp_path) -> None:
    results.write("prompts-winclip", method="winclip", score=0.7, pixel=0.4)
    section = ANALYSES["prompts"].render(analysis_records("prompts", "tiny", results.root), tmp_path, "tiny")
    assert "P-AUPRO (exact)" in section.tables[0].header


def test_shots_figure_draws_each_variant_in_its_own_panel(results, tmp_path) -> None:
    results.write("shots-winclip-zero", method="winclip", score=0.6, pixel=0.4)
    results.write("shots-aprillab-zero", method="aprillab", score=0.7, pixel=0.6, config=OFFICIAL)
    section = ANALYSES["shots"].render(analysis_records("shots", "tiny", results.root), tmp_path, "tiny")
    points = json.loads(section.figures[0].provenance.read_text())["points"]
    aupro = {(p["series"], p["metric"]): p["mean"] for p in points if "aupro" in p["metric"]}
    assert aupro == {
        ("method=winclip", "pixel_aupro@exact"): 40.0,
        ("method=aprillab", "pixel_aupro@official"): 60.0,
    }


def test_a_one_metric_figure_never_mixes_variants(results, tmp_path) -> None:
    results.write("x", method="winclip", score=0.6, pixel=0.4, efficiency={"ms_per_image": 2.0})
    exact_only = load_records([results.root])
    figure = pareto_figure(
        exact_only, costs=["ms_per_image"], metric="pixel_aupro", legend=["method"], title="t",
        target=tmp_path / "exact.png",
    )  # fmt: skip
    assert json.loads(figure.provenance.read_text())["points"][0]["metric"] == "pixel_aupro@exact"
    results.write(
        "y", method="aprillab", score=0.7, pixel=0.6, config=OFFICIAL, efficiency={"ms_per_image": 3.0}
    )
    with pytest.raises(ValueError, match="several variants"):
        pareto_figure(
            load_records([results.root]), costs=["ms_per_image"], metric="pixel_aupro", legend=["method"],
            title="t", target=tmp_path / "mixed.png",
        )  # fmt: skip
