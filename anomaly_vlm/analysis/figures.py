"""Figures of the analyses: lines with spread bands, grouped bars, heatmaps, cost-accuracy Pareto fronts.

Every figure names every dimension that varies among the records it draws: the dimensions on its axes
and in its legend, plus any other varying config value that they do not determine
(:func:`~anomaly_vlm.analysis.records.complete_dimensions`), which is added to the series labels; what
is constant is listed under the title. Beside each PNG a JSON file lists, per point, the mean, spread,
number of replicates and the ``results.json`` files it was computed from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_vlm.analysis.records import (  # noqa: E402
    Record,
    complete_dimensions,
    configurations,
    describe,
    dump,
    format_value,
    group_by,
    label_of,
    metric_variant,
    split_variants,
    varying_keys,
)
from anomaly_vlm.reporting.plots import TITLES  # noqa: E402

#: Dimensions listed under a title when they are the same for every record of a figure.
HEADLINE = (
    "dataset",
    "data.categories",
    "train_dataset",
    "backbone",
    "backbone.image_size",
    "shots",
    "method",
)

EFFICIENCY_TITLES = {
    "ms_per_image": "latency (ms/image)",
    "flops_per_image": "GFLOPs/image",
    "total_parameters": "parameters (M)",
    "peak_cpu_memory_mb": "peak CPU memory (MB)",
    "peak_gpu_memory_mb": "peak GPU memory (MB)",
}
EFFICIENCY_SCALE = {"flops_per_image": 1e-9, "total_parameters": 1e-6}


def metric_title(metric: str) -> str:
    """``pixel AUROC``; a variant-dependent metric with its variant: ``pixel AUPRO (official)``."""
    base, variant = metric_variant(metric)
    title = TITLES.get(base) or EFFICIENCY_TITLES.get(base, base)
    return f"{title} ({variant})" if variant else title


def axis_title(metric: str) -> str:
    """The y-axis title: metrics in percent, efficiency figures in their own unit."""
    return f"{metric_title(metric)} (%)" if metric_variant(metric)[0] in TITLES else metric_title(metric)


@dataclass
class FigureOutput:
    """A written figure: the PNG, its provenance JSON, the title and the dimensions it names."""

    png: Path
    provenance: Path
    title: str
    dimensions: list[str]


@dataclass
class Provenance:
    """Points of one figure and the files behind each."""

    title: str
    points: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **point: Any) -> None:
        self.points.append(point)


def subtitle(records: Sequence[Record], shown: Sequence[str]) -> str:
    """The headline dimensions that are the same for every record (``dataset=synthetic, backbone=tiny``)."""
    varying = set(varying_keys(records))
    constant = [key for key in HEADLINE if key not in shown and key not in varying]
    if not records:
        return ""
    return "; ".join(f"{label_of(key)}={format_value(records[0].value(key))}" for key in constant)


def series_dimensions(records: Sequence[Record], axes: Sequence[str], legend: Sequence[str]) -> list[str]:
    """The legend dimensions, completed with every varying value the axes and legend leave open."""
    return [*legend, *complete_dimensions(records, [*axes, *legend])]


def _save(figure, target: Path, provenance: Provenance, dimensions: list[str]) -> FigureOutput:
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(target, dpi=110, bbox_inches="tight")  # legends placed beside the axes stay in
    plt.close(figure)
    meta = target.with_suffix(".json")
    meta.write_text(
        json.dumps(
            {"title": provenance.title, "dimensions": dimensions, "points": provenance.points},
            indent=1,
            default=str,
        )
    )
    return FigureOutput(target, meta, provenance.title, dimensions)


def one_variant(records: Sequence[Record], metric: str) -> str:
    """The metric of a one-metric figure, with its variant (``pixel_aupro@exact``) where it has variants.

    Raises:
        ValueError: the records computed several variants of it; draw one figure per variant.
    """
    (name, *others) = split_variants(records, [metric])
    if others:
        raise ValueError(f"{metric} of several variants ({name}, {', '.join(others)}): one figure each")
    return name


def _std_text(n: int, replicate: str) -> str:
    return f"mean ± std over {replicate}" if n > 1 else "single run"


def line_figure(
    records: Sequence[Record],
    *,
    x: str,
    metrics: Sequence[str],
    legend: Sequence[str],
    title: str,
    target: Path,
    x_of: Callable[[Record], float | None] | None = None,
    published: Callable[[Record, str], list[tuple[float, float]]] | None = None,
    reference_line: Callable[[Record], bool] | None = None,
    log_x: bool = False,
    replicate: str = "replicates",
    x_keys: Sequence[str] | None = None,
    x_label: str | None = None,
    reference_label: str | None = None,
) -> FigureOutput | None:
    """Metric vs ``x``, one line per series, shaded mean ± std where a point has several replicates.

    Args:
        records: the results to draw.
        x: the dimension on the x axis (a record's value, or ``x_of(record)``).
        metrics: one panel per metric.
        legend: dimensions that make a series; varying values they leave open are added.
        title: the figure title (the metric and the constant dimensions are added).
        target: the PNG to write.
        x_of: numeric x of a record (default: its ``x`` value); None drops the record from the lines.
        published: ``(a record of the series, metric) -> [(x, value)]`` published points, drawn as crosses.
        reference_line: records drawn as a horizontal dashed line of their series' colour instead of a
            point (e.g. the published combination of tap blocks).
        log_x: logarithmic x axis.
        replicate: what the spread is taken over, for the caption ("reference draws").
        x_keys: the dimensions the x axis encodes (default ``[x]``), e.g. the tap-block keys of methods.
        x_label: the x axis title (default: the name of ``x``).
        reference_label: what the dashed lines are, for the legend (default: their x values).
    """
    records = list(records)
    if not records:
        return None
    metrics = split_variants(records, metrics)  # a panel per AUPRO variant
    x_keys = list(x_keys or [x])
    series_keys = series_dimensions(records, x_keys, legend)
    provenance = Provenance(title)
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.4), squeeze=False)
    max_n = 1
    for axis, metric in zip(axes[0], metrics, strict=True):
        for members in group_by(records, series_keys).values():
            label = describe(members[0], series_keys) or "all runs"
            line_records = [r for r in members if not (reference_line and reference_line(r))]
            refs = [r for r in members if reference_line and reference_line(r)]
            points = []
            for cell in configurations(line_records).values():
                position = (x_of or (lambda r: r.value(x)))(cell.records[0])
                mean = cell.mean(metric)
                if position is None or mean is None:
                    continue
                points.append((float(position), mean, cell.std(metric) or 0.0, cell))
            points.sort(key=lambda item: item[0])
            colour = None
            if points:
                xs = np.array([p[0] for p in points])
                means = np.array([p[1] for p in points])
                stds = np.array([p[2] for p in points])
                (drawn,) = axis.plot(xs, means, marker="o", label=label)
                colour = drawn.get_color()
                if any(p[3].n > 1 for p in points):
                    axis.fill_between(xs, means - stds, means + stds, color=colour, alpha=0.2)
                for position, mean, std, cell in points:
                    max_n = max(max_n, cell.n)
                    provenance.add(
                        series=label, x=position, metric=metric, mean=mean, std=std, n=cell.n,
                        sources=cell.sources,
                    )  # fmt: skip
            for cell in configurations(refs).values():
                mean = cell.mean(metric)
                if mean is None:
                    continue
                value = " ".join(
                    format_value(cell.records[0].value(key))
                    for key in x_keys
                    if key in cell.records[0].fields()
                )
                line = axis.axhline(
                    mean,
                    linestyle="--",
                    color=colour,
                    alpha=0.8,
                    label=f"{label}: {reference_label or f'{x_label or label_of(x)}={value}'}",
                )
                colour = colour or line.get_color()
                provenance.add(
                    series=label, x=f"{x_label or label_of(x)}={value} (line)", metric=metric, mean=mean,
                    std=cell.std(metric), n=cell.n, sources=cell.sources,
                )  # fmt: skip
            if published is not None:
                paper = published(members[0], metric)
                if paper:
                    axis.scatter(
                        *zip(*paper, strict=True), marker="x", s=60, color=colour, label=f"{label}: published"
                    )
                    for position, value in paper:
                        provenance.add(series=label, x=position, metric=metric, published=value)
        if log_x:
            axis.set_xscale("log", base=2)
            axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_xlabel(x_label or label_of(x))
        axis.set_ylabel(axis_title(metric))
        axis.set_title(metric_title(metric), fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    full_title = _full_title(title, records, [x_label or x, *series_keys], _std_text(max_n, replicate))
    figure.suptitle(full_title, fontsize=10)
    provenance.title = full_title
    return _save(figure, target, provenance, [*x_keys, *series_keys])


def _full_title(title: str, records: Sequence[Record], shown: Sequence[str], spread: str) -> str:
    constant = subtitle(records, shown)
    lines = [title, f"series: {', '.join(label_of(key) for key in shown[1:]) or '—'}; {spread}"]
    if constant:
        lines.append(constant)
    return "\n".join(lines)


def bar_figure(
    records: Sequence[Record],
    *,
    categories_of: Callable[[Record], list[str]],
    categories: Sequence[str],
    category_keys: Sequence[str],
    metrics: Sequence[str],
    legend: Sequence[str],
    title: str,
    target: Path,
) -> FigureOutput | None:
    """Grouped bars: ``categories`` on x (``categories_of`` maps a record to the bars it stands in, none
    to skip it), one bar per series, mean over replicates with std as error bar.

    ``category_keys`` are the dimensions the x categories encode (named on the x axis).
    """
    records = [r for r in records if categories_of(r)]
    if not records:
        return None
    metrics = split_variants(records, metrics)  # a panel per AUPRO variant
    series_keys = series_dimensions(records, category_keys, legend)
    groups = group_by(records, series_keys)
    provenance = Provenance(title)
    figure, axes = plt.subplots(
        len(metrics), 1, figsize=(max(7.0, 1.1 * len(categories) + 3), 3.6 * len(metrics)), squeeze=False
    )
    width = 0.8 / max(1, len(groups))
    positions = np.arange(len(categories))
    for axis, metric in zip(axes[:, 0], metrics, strict=True):
        for index, members in enumerate(groups.values()):
            label = describe(members[0], series_keys)
            means, stds = [], []
            for category in categories:
                chosen = [r for r in members if category in categories_of(r)]
                cells = list(configurations(chosen).values())
                cell = cells[0] if len(cells) == 1 else None
                mean = cell.mean(metric) if cell else None
                means.append(np.nan if mean is None else mean)
                stds.append(0.0 if cell is None else (cell.std(metric) or 0.0))
                if cell and mean is not None:
                    provenance.add(
                        series=label, x=category, metric=metric, mean=mean, std=cell.std(metric), n=cell.n,
                        sources=cell.sources,
                    )  # fmt: skip
            axis.bar(
                positions + index * width - 0.4 + width / 2, means, width, yerr=stds, capsize=2, label=label
            )
        axis.set_xticks(positions, categories, rotation=20, ha="right", fontsize=8)
        axis.set_ylabel(f"{metric_title(metric)} (%)")
        axis.set_ylim(0, 100)
        axis.set_xlabel(" / ".join(label_of(key) for key in category_keys))
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    full_title = _full_title(
        title, records, [" / ".join(category_keys), *series_keys], "mean ± std over seeds"
    )
    figure.suptitle(full_title, fontsize=10)
    provenance.title = full_title
    return _save(figure, target, provenance, [*category_keys, *series_keys])


def heatmap_figure(
    records: Sequence[Record],
    *,
    row_of: Callable[[Record], str],
    column_of: Callable[[Record], str],
    row_label: str,
    column_label: str,
    metric: str,
    panel_keys: Sequence[str],
    title: str,
    target: Path,
) -> FigureOutput | None:
    """A matrix per panel (e.g. per method): rows = ``row_of``, columns = ``column_of``, cells = mean metric.

    Cells where row and column are equal are outlined (trained and tested on the same data).
    """
    records = list(records)
    if not records:
        return None
    metric = one_variant(records, metric)
    panels_keys = series_dimensions(
        records, ["train_data.categories", "data.categories", "train_dataset", "dataset"], panel_keys
    )
    panels = group_by(records, panels_keys)
    rows = sorted({row_of(r) for r in records})
    columns = sorted({column_of(r) for r in records})
    provenance = Provenance(title)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(1.0 + 1.3 * len(columns) * len(panels) + 1.2, 1.0 + 0.9 * len(rows) + 1.2),
        squeeze=False,
    )  # fmt: skip
    for axis, members in zip(axes[0], panels.values(), strict=True):
        label = describe(members[0], panels_keys)
        matrix = np.full((len(rows), len(columns)), np.nan)
        for cell in configurations(members).values():
            first = cell.records[0]
            i, j = rows.index(row_of(first)), columns.index(column_of(first))
            mean = cell.mean(metric)
            if mean is None:
                continue
            matrix[i, j] = mean
            provenance.add(
                panel=label, row=rows[i], column=columns[j], metric=metric, mean=mean, std=cell.std(metric),
                n=cell.n, sources=cell.sources,
            )  # fmt: skip
        image = axis.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        for i in range(len(rows)):
            for j in range(len(columns)):
                if not math.isnan(matrix[i, j]):
                    shade = "black" if matrix[i, j] > 60 else "white"
                    axis.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=8, color=shade)
                if rows[i] == columns[j]:
                    axis.add_patch(
                        # inset, so neighbouring cells do not look outlined too
                        plt.Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False, edgecolor="red", lw=2)
                    )
        axis.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
        axis.set_yticks(range(len(rows)), rows, fontsize=8)
        axis.set_xlabel(column_label)
        axis.set_ylabel(row_label)
        axis.set_title(label, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label=f"{metric_title(metric)} (%)")
    full_title = (
        f"{title}\n{metric_title(metric)} (%), rows: {row_label}, columns: {column_label}; panels: "
        f"{', '.join(label_of(k) for k in panels_keys)}\nred box: trained and tested on the same data"
    )
    constant = subtitle(records, ["data.categories", *panels_keys])
    if constant:
        full_title += f"\n{constant}"
    figure.suptitle(full_title, fontsize=9)
    provenance.title = full_title
    return _save(figure, target, provenance, [row_label, column_label, *panels_keys])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower cost (x) and higher accuracy (y), by cost."""
    front: list[tuple[float, float]] = []
    best = -math.inf
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((cost, accuracy))
            best = accuracy
    return front


def pareto_figure(
    records: Sequence[Record],
    *,
    costs: Sequence[str],
    metric: str,
    legend: Sequence[str],
    title: str,
    target: Path,
) -> FigureOutput | None:
    """Accuracy vs each cost (log x), one marker per configuration, the Pareto front as a step line."""
    records = list(records)
    if not records:
        return None
    metric = one_variant(records, metric)
    series_keys = series_dimensions(records, [], legend)
    provenance = Provenance(title)
    # Two panels per row, one legend for all beside the last: per-panel legends squeezed the axes.
    rows = math.ceil(len(costs) / 2)
    figure, grid = plt.subplots(rows, 2, figsize=(13.0, 4.2 * rows + 0.8), squeeze=False)
    axes = [list(grid.flatten()[: len(costs)])]
    for spare in grid.flatten()[len(costs) :]:
        spare.set_visible(False)
    markers = "osD^v<>pP*h"
    for axis, cost in zip(axes[0], costs, strict=True):
        scale = EFFICIENCY_SCALE.get(cost, 1.0)
        everything: list[tuple[float, float]] = []
        for index, members in enumerate(group_by(records, series_keys).values()):
            label = describe(members[0], series_keys)
            xs, ys = [], []
            for cell in configurations(members).values():
                value, mean = cell.efficiency_mean(cost), cell.mean(metric)
                if value is None or mean is None or value <= 0:
                    continue
                xs.append(value * scale)
                ys.append(mean)
                provenance.add(
                    series=label, cost=cost, x=value * scale, metric=metric, mean=mean, n=cell.n,
                    sources=cell.sources,
                )  # fmt: skip
            if xs:
                axis.scatter(xs, ys, marker=markers[index % len(markers)], s=36, label=label)
                everything += list(zip(xs, ys, strict=True))
        front = pareto_front(everything)
        if front:
            fx, fy = zip(*front, strict=True)
            axis.step(fx, fy, where="post", color="black", linewidth=1, alpha=0.7, label="Pareto front")
        values = [x for x, _ in everything]
        if values and max(values) > 10 * min(values):
            axis.set_xscale("log")
            axis.set_xlabel(f"{metric_title(cost)} (log)")
        else:  # under a decade a log axis labels every minor tick, and the labels overlap
            axis.ticklabel_format(axis="x", style="plain", useOffset=False)
            axis.set_xlabel(metric_title(cost))
        axis.set_ylabel(f"{metric_title(metric)} (%)")
        axis.grid(alpha=0.3)
        axis.set_title(f"vs {metric_title(cost)}", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    full_title = _full_title(title, records, ["cost", *series_keys], "mean over seeds")
    figure.suptitle(full_title, fontsize=10)
    provenance.title = full_title
    return _save(figure, target, provenance, [*costs, *series_keys])


def series_key(record: Record, keys: Sequence[str]) -> tuple:
    return tuple(dump(record.value(key)) for key in keys)
