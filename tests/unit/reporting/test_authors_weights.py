"""Rows tested with the authors' released weights: labelled apart, beside published and trained here."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from anomaly_vlm.reporting import tables

_spec = importlib.util.spec_from_file_location("tables_helpers", Path(__file__).with_name("test_tables.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


def _runs(root: Path, official: bool = True) -> None:
    _helpers.fake_result(
        root / "trained", "aprillab", "mvtec", 0, 0, 0.80, train_dataset="visa", checkpoint_origin="project"
    )
    if official:
        _helpers.fake_result(
            root / "official",
            "aprillab",
            "mvtec",
            0,
            0,
            0.88,
            train_dataset="visa",
            checkpoint_origin="official",
            trained_checkpoint_sha256="ab" * 32,
        )


def test_authors_weights_are_a_row_of_their_own_with_the_three_columns(tmp_path: Path) -> None:
    _runs(tmp_path / "sweep")
    out = tmp_path / "reports"
    tables.make_tables([tmp_path / "sweep"], out, plots=False)
    rows = list(csv.DictReader((out / "mvtec_summary.csv").open()))
    assert sorted(row["image_auroc_mean"] for row in rows) == ["79.00", "87.00"]
    markdown = (out / "mvtec_summary.md").read_text()
    assert "| aprillab (authors' weights) |" in markdown
    assert "| aprillab (trained on visa) |" in markdown
    assert "## Published, authors' weights, trained here" in markdown
    # APRIL-GAN's paper: MVTec AD zero-shot image AUROC 86.1.
    assert "| aprillab | vit_b16_plus_240 / winclip | 0 | I-AUROC | 86.1 | 87.0 | 79.0 |" in markdown


def test_no_comparison_without_authors_weights(tmp_path: Path) -> None:
    _runs(tmp_path / "sweep", official=False)
    out = tmp_path / "reports"
    tables.make_tables([tmp_path / "sweep"], out, plots=False)
    assert "authors' weights" not in (out / "mvtec_summary.md").read_text()
