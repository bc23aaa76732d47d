"""The alignment analysis's figure, table and attribution text (``method=alignment`` runs and the published
methods' own runs on the same data).

The grid is strategy x metric: accuracy (image/pixel AUROC, AUPRO) and cost (trainable parameters, training
time, per-image time), each cell coloured within its column. The attribution compares, per published
method, the gain of its alignment alone in the controlled grid (its strategy against ``none``) with the gain
of the whole method over the two-prompt CLIP baseline, both measured here on the same test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_vlm.analysis.figures import FigureOutput, Provenance, _save, metric_title  # noqa: E402
from anomaly_vlm.analysis.records import Record  # noqa: E402
from anomaly_vlm.analysis.tables import Table, write_rows  # noqa: E402
from anomaly_vlm.methods.alignment.torch_model import SHORTHANDS  # noqa: E402

#: Accuracy in percent, then cost as recorded (``train_seconds``: the job's training wall time).
GRID_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "trainable_parameters",
    "train_seconds",
    "ms_per_image",
)
COST_TITLES = {"trainable_parameters": "trainable params", "train_seconds": "training time (s)"}
#: Columns where less is better (coloured the other way round).
LOWER_IS_BETTER = {"trainable_parameters", "train_seconds", "ms_per_image"}
#: The naive dense baseline of the grid, and the method the published methods' gains are counted from.
BASELINE_STRATEGY = "none"
BASELINE_METHOD = "clip"
#: Accuracy metrics the attribution text speaks about.
ATTRIBUTED = ("image_auroc", "pixel_auroc")


def strategy_of(record: Record) -> str | None:
    """The ``method.alignment`` of an alignment run (None for another method's run)."""
    if record.value("method") != "alignment":
        return None
    value = record.value("method.alignment")
    return "none" if value is None else str(value)


def measure(record: Record, metric: str) -> float | None:
    """A grid value: a metric in percent or a cost; training time 0 for a run that trained nothing."""
    value = record.measure(metric)
    if value is None and metric == "train_seconds" and record.efficiency("trainable_parameters") == 0:
        return 0.0
    return value


def _title(metric: str) -> str:
    return COST_TITLES.get(metric) or metric_title(metric)


def _text(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == "trainable_parameters":
        return f"{value:,.0f}"
    if metric in ("train_seconds", "ms_per_image"):
        return f"{value:.1f}"
    return f"{value:.1f}"


def grid_rows(records: Sequence[Record], order: Sequence[str]) -> list[tuple[str, Record]]:
    """One alignment run per strategy, in ``order`` (unknown strategies last), the latest file winning."""
    by_strategy: dict[str, Record] = {}
    for record in sorted(records, key=lambda r: r.source):
        strategy = strategy_of(record)
        if strategy is not None:
            by_strategy[strategy] = record
    ranked = sorted(by_strategy, key=lambda s: (order.index(s) if s in order else len(order), s))
    return [(strategy, by_strategy[strategy]) for strategy in ranked]


def grid_figure(rows: Sequence[tuple[str, Record]], out: Path) -> FigureOutput | None:
    """The strategy x metric grid; each column coloured from its worst (light) to its best (dark)."""
    if not rows:
        return None
    title = "Alignment: strategy x metric (one backbone, taps, prompt set, scoring rule, training budget)"
    provenance = Provenance(title)
    values = np.full((len(rows), len(GRID_METRICS)), np.nan)
    for i, (strategy, record) in enumerate(rows):
        for j, metric in enumerate(GRID_METRICS):
            value = measure(record, metric)
            if value is not None:
                values[i, j] = value
                provenance.add(
                    series=strategy, x=metric, metric=metric, mean=value, n=1, sources=[record.source]
                )
    shade = np.zeros_like(values)
    for j, metric in enumerate(GRID_METRICS):
        column = values[:, j]
        finite = column[np.isfinite(column)]
        if finite.size and finite.max() > finite.min():
            scaled = (column - finite.min()) / (finite.max() - finite.min())
            shade[:, j] = 1.0 - scaled if metric in LOWER_IS_BETTER else scaled
    shade[~np.isfinite(values)] = np.nan
    figure, axis = plt.subplots(figsize=(1.6 * len(GRID_METRICS) + 2.5, 0.45 * len(rows) + 1.6))
    axis.imshow(np.ma.masked_invalid(shade), cmap="Blues", vmin=-0.2, vmax=1.2, aspect="auto")
    for i in range(len(rows)):
        for j, metric in enumerate(GRID_METRICS):
            value = None if np.isnan(values[i, j]) else float(values[i, j])
            axis.text(j, i, _text(metric, value), ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(GRID_METRICS)), [_title(m) for m in GRID_METRICS], rotation=20, fontsize=8)
    axis.set_yticks(range(len(rows)), [strategy for strategy, _ in rows], fontsize=8)
    axis.set_xlabel("metric (each column coloured from worst to best)")
    axis.set_ylabel("alignment strategy")
    axis.set_title(title, fontsize=9)
    return _save(figure, out / "figures" / "alignment_grid.png", provenance, ["method.alignment"])


def grid_table(rows: Sequence[tuple[str, Record]], out: Path) -> Table | None:
    """The grid's numbers with their ``results.json`` files."""
    return write_rows(
        "Alignment: metrics and costs per strategy",
        ["alignment", *[_title(m) for m in GRID_METRICS]],
        [[strategy, *[_text(m, measure(record, m)) for m in GRID_METRICS]] for strategy, record in rows],
        [[record.source] for _, record in rows],
        out / "alignment",
    )


def _method_runs(records: Sequence[Record]) -> dict[str, Record]:
    runs: dict[str, Record] = {}
    for record in sorted(records, key=lambda r: r.source):
        method = str(record.value("method"))
        if method != "alignment":
            runs[method] = record
    return runs


def attribution(
    rows: Sequence[tuple[str, Record]], records: Sequence[Record], published: dict[str, str]
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Per published method and accuracy metric, the share of its gain its alignment accounts for.

    The method's gain is its own run minus the CLIP baseline's run; its alignment's gain is the grid's row
    of its strategy minus the ``none`` row. Both are differences on the same test images.

    Returns:
        The sentences of the report, and the table rows with their sources.
    """
    grid = dict(rows)
    methods = _method_runs(records)
    none, baseline = grid.get(BASELINE_STRATEGY), methods.get(BASELINE_METHOD)
    sentences, table, sources = [], [], []
    if none is None or baseline is None:
        return (
            ["The attribution needs the 'none' strategy and the CLIP baseline's run; one is missing."],
            [],
            [],
        )
    for method, strategy in published.items():
        run, aligned = methods.get(method), grid.get(strategy)
        if run is None or aligned is None:
            continue
        parts = []
        for metric in ATTRIBUTED:
            values = [r.measure(metric) for r in (run, baseline, aligned, none)]
            if any(v is None for v in values):
                continue
            method_gain, alignment_gain = values[0] - values[1], values[2] - values[3]
            share, share_text = gain_share(method_gain, alignment_gain)
            parts.append(
                f"{_title(metric)}: the method is {method_gain:+.1f} points against CLIP "
                f"({values[1]:.1f} → {values[0]:.1f}); its alignment alone ({strategy}) is "
                f"{alignment_gain:+.1f} against 'none' ({values[3]:.1f} → {values[2]:.1f}), so {share_text}"
            )
            table.append(
                [method, strategy, _title(metric), f"{method_gain:+.1f}", f"{alignment_gain:+.1f}", share]
            )
            sources.append([run.source, baseline.source, aligned.source, none.source])
        if parts:
            # A shorthand (adaclip) names its parts; those that are rows of the grid are shown alone.
            names = SHORTHANDS.get(strategy, strategy.split("+"))
            singles = [part for part in names if part in grid and part != strategy]
            detail = ""
            if singles:
                detail = (
                    " Its parts alone: "
                    + ", ".join(f"{part} {_delta(grid[part], none)}" for part in singles)
                    + " (image AUROC over 'none')."
                )
            sentences.append(
                f"{method}: " + "; ".join(parts) + "; the rest comes from its other choices "
                "(taps, prompts, scoring, training)." + detail
            )
    return sentences, table, sources


def gain_share(method_gain: float, alignment_gain: float) -> tuple[str, str]:
    """The table cell and the sentence for the share of ``method_gain`` that ``alignment_gain`` explains.

    A percentage is only stated where it reads as a share: of a real gain, by an alignment that helps. An
    alignment that lowers the metric explains none of the gain (a negative percentage would read as
    nonsense), and one that gains more than the whole method explains all of it, the method's other
    choices costing the difference.
    """
    if method_gain < 0.05:
        return "—", "there is no gain over CLIP to attribute"
    if alignment_gain <= 0.0:
        return "0%", "its alignment alone does not help"
    if alignment_gain >= method_gain:
        return "100%", (
            f"its alignment alone gains more than the whole method (its other choices cost "
            f"{alignment_gain - method_gain:.1f} points)"
        )
    share = f"{100.0 * alignment_gain / method_gain:.0f}%"
    return share, f"its alignment accounts for {share} of it"


def _delta(record: Record, none: Record) -> str:
    value, base = record.measure("image_auroc"), none.measure("image_auroc")
    return "—" if value is None or base is None else f"{value - base:+.1f}"


def attribution_table(table: list[list[str]], sources: list[list[str]], out: Path) -> Table | None:
    return write_rows(
        "Alignment: share of each published method's gain that its alignment accounts for",
        ["method", "its alignment", "metric", "method − CLIP", "alignment − none", "share"],
        table,
        sources,
        out / "alignment_attribution",
    )
