"""make tables: a P-AUPRO column per AUPRO variant, named in the header, in every table and plot."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from anomaly_vlm.reporting import plots, tables

_spec = importlib.util.spec_from_file_location("tables_helpers", Path(__file__).with_name("test_tables.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


def _header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| method"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _touch_instead_of_render(figure, target: Path) -> Path:
    plots.plt.close(figure)
    target.touch()
    return target


def test_each_aupro_variant_has_its_own_column(tmp_path: Path, monkeypatch) -> None:
    # The figures are built but not rendered: the assertions read which plot files make_plots names;
    # rendering PNGs is checked by test_tables.py::test_summary_has_mean_std_published_and_delta.
    monkeypatch.setattr(plots, "save_figure", _touch_instead_of_render)
    _helpers.fake_result(tmp_path / "runs" / "w", "winclip", "synthetic", 0, 0, 0.80)
    _helpers.fake_result(tmp_path / "runs" / "a", "aprillab", "synthetic", 0, 0, 0.90, aupro="official")
    out = tmp_path / "reports"
    tables.make_tables([tmp_path / "runs"], out)
    markdown = (out / "synthetic_summary.md").read_text()
    header = _header(markdown)
    assert "P-AUPRO" not in header
    exact, official = header.index("P-AUPRO (exact)"), header.index("P-AUPRO (official)")
    rows = {
        cells[0].split(" ")[0]: cells
        for line in markdown.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert rows["winclip"][official] == "—" and rows["winclip"][exact] == "79.0"
    assert rows["aprillab"][exact] == "—" and rows["aprillab"][official] == "89.0"
    per_category = (out / "synthetic_per_category.md").read_text()
    assert "| P-AUPRO (official) |" in per_category and "| P-AUPRO (exact) |" in per_category
    assert "P-AUPRO (exact)" in (out / "synthetic_per_category.tex").read_text()
    assert {row["aupro"] for row in csv.DictReader((out / "synthetic_per_category.csv").open())} == {
        "exact",
        "official",
    }
    folder = out / "plots"
    assert (folder / "synthetic_per_category_pixel_aupro_exact.png").exists()
    assert (folder / "synthetic_per_category_pixel_aupro_official.png").exists()
    assert not (folder / "synthetic_per_category_pixel_aupro.png").exists()


def test_one_variant_is_named_in_the_header_too(tmp_path: Path) -> None:
    _helpers.fake_result(tmp_path / "runs" / "w", "winclip", "synthetic", 0, 0, 0.80)
    tables.make_tables([tmp_path / "runs"], tmp_path / "reports", plots=False)
    header = _header((tmp_path / "reports" / "synthetic_summary.md").read_text())
    assert header[-1] == "P-AUPRO (exact)"
