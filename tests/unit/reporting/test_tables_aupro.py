"""Tables say which AUPRO a number is and never average the exact and the official variant."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from anomaly_vlm.reporting import tables

_spec = importlib.util.spec_from_file_location("tables_helpers", Path(__file__).with_name("test_tables.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


def test_aupro_variant_splits_rows_and_is_labelled(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _helpers.fake_result(root / "exact", "aprillab", "mvtec", 0, 0, 0.80)
    _helpers.fake_result(root / "official", "aprillab", "mvtec", 0, 0, 0.90, aupro="official")
    out = tmp_path / "reports"
    # Tables only: test_aupro_columns.py::test_each_aupro_variant_has_its_own_column checks the plots.
    tables.make_tables([root], out, plots=False)
    rows = list(csv.DictReader((out / "mvtec_summary.csv").open()))
    assert sorted(row["aupro"] for row in rows) == ["exact", "official"]
    assert len({row["pixel_aupro_mean"] for row in rows}) == 2
    markdown = (out / "mvtec_summary.md").read_text()
    assert "aprillab [AUPRO: official]" in markdown and "P-AUPRO (official)" in markdown.split("|", 1)[0]
