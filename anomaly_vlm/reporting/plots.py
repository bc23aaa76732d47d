"""Plots for ``make tables`` (PNG): per-category bars, accuracy vs latency, metric vs shots."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from anomaly_vlm.metrics import METRIC_NAMES  # noqa: E402
from anomaly_vlm.reporting.runs import Group, published_value  # noqa: E402

TITLES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1max": "pixel F1-max",
    "pixel_aupro": "pixel AUPRO",
}


def layout(figure) -> None:
    """Lay out a figure: figures with a legend outside their axes use constrained layout, which makes room
    for it (tight layout cannot, and warns "Tight layout not applied"); the others tight layout."""
    if figure.get_layout_engine() is None:
        figure.tight_layout()


def save_figure(figure, target: Path) -> Path:
    """Lay out, write as PNG and release a figure (figures are not garbage-collected by pyplot)."""
    layout(figure)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target


#: Qualitative colours: the ten saturated tab20 hues, then their ten light ones, so the first 20 series
#: never share a colour (matplotlib's default cycle repeats after ten).
_TAB20 = plt.get_cmap("tab20").colors
COLOURS = tuple(matplotlib.colors.to_hex(c) for c in (*_TAB20[0::2], *_TAB20[1::2]))
#: 13 markers (coprime with the 20 colours): colour and marker together repeat only after 260 series.
MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "P", "*", "h", "X", "d")
HATCHES = ("//", "..", "xx", "\\\\", "oo", "--")


def series_styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """``label -> (colour, marker)``, one pair per distinct label, assigned in sorted label order (so the
    series of one method, whose labels start alike, sit together and a label's style does not depend on
    the order the rows came in)."""
    return {
        label: (COLOURS[index % len(COLOURS)], MARKERS[index % len(MARKERS)])
        for index, label in enumerate(sorted(set(labels)))
    }


_POINTS_PER_CHARACTER = 0.6  # average glyph width of the legend font, in units of its size


def figure_legend(figure, handles: list, labels: list[str], fontsize: float = 7) -> None:
    """One legend for all panels, below them, in as many columns as the figure's width holds.

    Labels longer than the width are wrapped, and the figure grows by the legend's height, so the axes keep
    their size (the figure must use constrained layout: ``layout="constrained"``).
    """
    if not handles:
        return
    width_pt = figure.get_figwidth() * 72 * 0.95
    marker_pt = 3.5 * fontsize  # handle and padding of one entry
    max_chars = max(10, int((width_pt - marker_pt) / (_POINTS_PER_CHARACTER * fontsize)))
    wrapped = [textwrap.fill(label, max_chars) for label in labels]
    longest = max(len(line) for label in wrapped for line in label.splitlines())
    columns = max(
        1, min(len(wrapped), int(width_pt // (longest * _POINTS_PER_CHARACTER * fontsize + marker_pt)))
    )
    per_column = math.ceil(len(wrapped) / columns)
    lines = max(
        sum(label.count("\n") + 1 for label in wrapped[start : start + per_column])
        for start in range(0, len(wrapped), per_column)
    )
    figure.set_figheight(figure.get_figheight() + lines * fontsize * 1.45 / 72 + 0.2)
    figure.legend(
        handles, wrapped, loc="outside lower center", ncols=columns, fontsize=fontsize, frameon=False
    )


#: Dimensions of a configuration beyond its method (with training data), shots and backbone: named in a
#: label when they vary among the configurations drawn together.
EXTRA_DIMENSIONS = (("prompts", "prompts={}"),)


def config_labels(configs: list[dict], with_shots: bool = True) -> list[str]:
    """One label per configuration (dicts with ``method_label`` -- the method with its training data --,
    ``shots``, ``backbone``, ``prompts``) that names every dimension varying among ``configs``, so no
    two differ only in what the label leaves out."""
    labels = []
    for config in configs:
        method = config.get("method_label") or config["method"]
        label = f"{method} {config['shots']}-shot" if with_shots else str(method)
        extras = [str(config["backbone"])]
        for key, template in EXTRA_DIMENSIONS:
            if len({other.get(key) for other in configs}) > 1:
                extras.append(template.format(config.get(key)))
        labels.append(f"{label} ({', '.join(extras)})")
    return labels


def _group_config(group: Group) -> dict:
    return {
        "method": group.method,
        "method_label": group.method_label,
        "shots": group.shots,
        "backbone": group.backbone,
        "prompts": group.prompts,
        "train_dataset": group.train_dataset,
    }


def per_category_bars(
    dataset: str, groups: list[Group], metric: str, target: Path, variant: str | None = None
) -> Path | None:
    """Grouped bars: categories on x, one bar (mean over seeds, std as error bar) per configuration.

    ``variant`` names the AUPRO variant all ``groups`` computed, in the titles.
    """
    title = f"{TITLES[metric]} ({variant})" if variant else TITLES[metric]
    categories: list[str] = []
    for group in groups:
        categories += [c for c in group.categories if c not in categories]
    series = []
    labels = config_labels([_group_config(group) for group in groups])
    for group, label in zip(groups, labels, strict=True):
        means, stds = [], []
        for category in categories:
            values = group.metric_values(metric, category)
            means.append(np.mean(values) if values else np.nan)
            stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        if not np.all(np.isnan(means)):
            series.append((label, np.array(means), np.array(stds)))
    if not series or not categories:
        return None
    width = 0.8 / len(series)
    positions = np.arange(len(categories))
    styles = series_styles([label for label, _, _ in series])
    figure, axis = plt.subplots(
        figsize=(max(6.0, 0.7 * len(categories) * max(1, len(series)) ** 0.5 + 3), 4), layout="constrained"
    )
    bars = []
    for index, (label, means, stds) in enumerate(series):
        colour, _ = styles[label]
        # Past the distinct colours, a hatch tells the series apart.
        hatch = None if sorted(styles).index(label) < len(COLOURS) else HATCHES[index % len(HATCHES)]
        bars.append(
            axis.bar(
                positions + index * width - 0.4 + width / 2,
                means,
                width,
                yerr=stds,
                capsize=2,
                color=colour,
                hatch=hatch,
            )
        )
    axis.set_xticks(positions, categories, rotation=45, ha="right")
    axis.set_ylabel(f"{title} (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{dataset}: {title} per category")
    axis.grid(axis="y", alpha=0.3)
    figure_legend(figure, bars, [label for label, _, _ in series])  # below: bars stay visible
    return save_figure(figure, target)


def _log_ticks(axis, low: float, high: float) -> None:
    """Readable log-scale x ticks: 1-2-5 steps over few decades, decades only over many; plain numbers.

    Matplotlib's default labels every minor tick (2x10^1, 3x10^1, ...) when the range is under a
    decade or two, and those labels overlap.
    """
    decades = np.log10(max(high, 1e-9)) - np.log10(max(low, 1e-9))
    axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())


def accuracy_vs_latency_figure(rows: list[dict], dataset: str, metric: str = "image_auroc"):
    """The accuracy-vs-latency figure (None without timed rows); :func:`accuracy_vs_latency` saves it."""
    points = [
        (row["ms_per_image"], row[metric]["mean"], label)
        for row, label in zip(rows, config_labels(rows), strict=True)
        if row.get("ms_per_image") and row[metric]["mean"] is not None
    ]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    styles = series_styles([label for _, _, label in points])
    for latency, value, label in points:
        colour, marker = styles[label]
        axis.scatter(latency, value, s=30, color=colour, marker=marker)
        axis.annotate(label, (latency, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xscale("log")
    latencies = [point[0] for point in points]
    # A margin of a quarter decade on each side, so labels of the outermost points stay inside.
    low, high = min(latencies) / 10**0.25, max(latencies) * 10**0.25
    axis.set_xlim(low, high)
    _log_ticks(axis, low, high)
    axis.set_xlabel("latency (ms/image, median after warm-up)")
    axis.set_ylabel(f"{TITLES[metric]} (%)")
    axis.set_title(f"{dataset}: accuracy vs latency")
    axis.grid(alpha=0.3)
    return figure


def accuracy_vs_latency(
    dataset: str, rows: list[dict], target: Path, metric: str = "image_auroc"
) -> Path | None:
    """One point per configuration: median ms/image (log x) against the mean metric."""
    figure = accuracy_vs_latency_figure(rows, dataset, metric)
    return None if figure is None else save_figure(figure, target)


def metric_vs_shots(
    dataset: str,
    rows: list[dict],
    published: list[dict],
    target: Path,
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc"),
    styles: dict[str, tuple[str, str]] | None = None,
) -> Path | None:
    """Zero- vs few-shot: one line per configuration (all but shots) over shots; published dashed."""
    figure = metric_vs_shots_figure(dataset, rows, published, metrics, styles)
    return None if figure is None else save_figure(figure, target)


def metric_vs_shots_figure(
    dataset: str,
    rows: list[dict],
    published: list[dict],
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc"),
    styles: dict[str, tuple[str, str]] | None = None,
):
    """The metric-vs-shots figure (None without rows): one legend for the panels, below them, so it never
    covers a point; every series has its own colour and marker (``styles``, default
    :func:`series_styles` of the rows)."""
    lines: dict[str, list[dict]] = {}
    for row, label in zip(rows, config_labels(rows, with_shots=False), strict=True):
        lines.setdefault(label, []).append(row)
    if not lines:
        return None
    styles = styles or series_styles(list(lines))
    figure, axes = plt.subplots(
        1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False, layout="constrained"
    )
    legend: dict[str, object] = {}
    for axis, metric in zip(axes[0], metrics, strict=True):
        papers: set[str] = set()
        for label, line_rows in sorted(lines.items()):
            line_rows = sorted(line_rows, key=lambda r: r["shots"])
            shots = [r["shots"] for r in line_rows if r[metric]["mean"] is not None]
            means = [r[metric]["mean"] for r in line_rows if r[metric]["mean"] is not None]
            stds = [r[metric]["std"] or 0.0 for r in line_rows if r[metric]["mean"] is not None]
            if not shots:
                continue
            colour, marker = styles[label]
            drawn = axis.errorbar(shots, means, yerr=stds, marker=marker, color=colour, capsize=3)
            legend.setdefault(f"ours: {label}", drawn)
            method = line_rows[0]["method"]
            paper = [(s, published_value(published, method, dataset, s, metric)[0]) for s in (0, 1, 2, 4, 8)]
            paper = [(s, v) for s, v in paper if v is not None]
            if paper and method not in papers:  # once per method, in the colour of its first series
                papers.add(method)
                (dashed,) = axis.plot(*zip(*paper, strict=True), linestyle="--", marker="x", color=colour)
                legend.setdefault(f"paper: {method}", dashed)
        all_shots = sorted({row["shots"] for row in rows})
        axis.set_xticks(all_shots)
        axis.set_xlabel("shots (normal reference images)")
        axis.set_ylabel(f"{TITLES[metric]} (%)")
        axis.set_title(f"{dataset}: {TITLES[metric]} vs shots")
        axis.grid(alpha=0.3)
    figure_legend(figure, list(legend.values()), list(legend))
    return figure


def make_plots(
    dataset: str, groups: list[Group], rows: list[dict], published: list[dict], out: Path
) -> list[Path]:
    """Every plot of one dataset into ``out/plots``."""
    folder = Path(out) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        per_category_bars(dataset, groups, m, folder / f"{dataset}_per_category_{m}.png")
        for m in METRIC_NAMES
        if m != "pixel_aupro"
    ]
    # AUPRO: one chart per variant (the two are never drawn on one axis), the variant in its title.
    variants = sorted({group.aupro for group in groups}, key=lambda v: (v != "exact", v))
    for variant in variants:
        stem = "pixel_aupro" if len(variants) == 1 else f"pixel_aupro_{variant}"
        chosen = [group for group in groups if group.aupro == variant]
        target = folder / f"{dataset}_per_category_{stem}.png"
        written.append(per_category_bars(dataset, chosen, "pixel_aupro", target, variant))
    written.append(accuracy_vs_latency(dataset, rows, folder / f"{dataset}_accuracy_vs_latency.png"))
    written.append(metric_vs_shots(dataset, rows, published, folder / f"{dataset}_metric_vs_shots.png"))
    return [path for path in written if path is not None]
