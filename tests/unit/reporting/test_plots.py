"""Plots of make tables: legends that fit, and a colour and marker of its own for every series."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import matplotlib.colors
import pytest

from anomaly_vlm.reporting import plots, tables

_spec = importlib.util.spec_from_file_location("tables_helpers", Path(__file__).with_name("test_tables.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)

METHODS = ("clip", "winclip", "aprillab", "anomalyclip", "musc", "promptad")


def _rows(count: int, label_length: int = 90) -> list[dict]:
    rows = []
    for index in range(count):
        method = METHODS[index % len(METHODS)]
        # As long as the config values that label a row can be ("[detector=None, feature_cache.dir=...]").
        label = f"{method} [variant {index}: " + "x" * label_length + "]"
        for shots in (0, 1, 2, 4):
            rows.append(
                {
                    "method": method,
                    "method_label": label,
                    "backbone": "vit_l14_336",
                    "prompts": "p",
                    "shots": shots,
                    "image_auroc": {"mean": 50.0 + index + shots, "std": 0.5},
                    "pixel_auroc": {"mean": 60.0 + index + shots, "std": 0.5},
                }
            )
    return rows


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("count", [2, 12])
def test_shots_legend_fits_below_the_axes_without_layout_warnings(count: int) -> None:
    rows = _rows(count)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Tight layout not applied"
        figure = plots.metric_vs_shots_figure("mvtec", rows, tables.load_published())
        plots.layout(figure)
        figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [legend for legend in [*figure.legends, *(axis.get_legend() for axis in figure.axes)] if legend]
    assert len(legends) == 1  # one legend for the panels, which draw the same series
    box = legends[0].get_window_extent(renderer)
    page = figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    for axis in figure.axes:
        assert not _boxes_overlap(box, axis.get_tightbbox(renderer))
        # The plotting area keeps a usable height whatever the number of entries.
        assert axis.get_window_extent(renderer).height > 150
    # The drawn figure is the one metric_vs_shots saves (save_figure: layout + savefig); writing the PNG is
    # checked by test_tables.py::test_summary_has_mean_std_published_and_delta (file size > 1000 bytes).
    plots.plt.close(figure)


def test_every_series_has_its_own_colour_and_marker() -> None:
    rows = _rows(12)
    figure = plots.metric_vs_shots_figure("mvtec", rows, [])
    for axis in figure.axes:
        styles = [
            (matplotlib.colors.to_hex(line.get_color()), line.get_marker())
            for line in axis.get_lines()
            if line.get_linestyle() != "None"
        ]
        assert len(styles) == 12
        assert len({colour for colour, _ in styles}) == 12 and len({m for _, m in styles}) == 12
    plots.plt.close(figure)


def test_series_styles_follow_the_labels_not_their_order() -> None:
    labels = [f"m{index}" for index in range(30)]
    styles = plots.series_styles(labels)
    assert styles == plots.series_styles(list(reversed(labels)))
    assert len(set(styles.values())) == 30  # colour and marker together tell every series apart
    assert len({colour for colour, _ in list(styles.values())[:20]}) == 20


def test_bars_and_latency_of_a_dozen_labelled_configurations_plot_without_warnings(tmp_path: Path) -> None:
    for index in range(12):
        folder = tmp_path / "runs" / str(index)
        path = _helpers.fake_result(folder, METHODS[index % 6], "synthetic", index % 3, 0, 0.8)
        payload = json.loads(path.read_text())
        payload["config"] = {"data": {"categories": None}, "method": {"option": "y" * 40 + str(index)}}
        path.write_text(json.dumps(payload))
    groups = tables.collect([tmp_path / "runs"])
    rows = tables.summary_rows(groups, [])
    assert len(groups) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bars = plots.per_category_bars("synthetic", groups, "image_auroc", tmp_path / "bars.png")
        latency = plots.accuracy_vs_latency("synthetic", rows, tmp_path / "latency.png")
    assert bars.stat().st_size > 1000 and latency.stat().st_size > 1000
