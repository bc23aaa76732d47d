"""Plots for ``make tables`` (PNG): per-category bars, accuracy vs latency, metric vs shots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from anomaly_vlm.metrics import METRIC_NAMES  # noqa: E402

if TYPE_CHECKING:
    from anomaly_vlm.reporting.tables import Group

TITLES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1max": "pixel F1-max",
    "pixel_aupro": "pixel AUPRO",
}


def save_figure(figure, target: Path) -> Path:
    """Lay out, write as PNG and release a figure (figures are not garbage-collected by pyplot)."""
    figure.tight_layout()
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target


def _config_label(group: Group) -> str:
    return f"{group.method_label} {group.shots}-shot ({group.backbone})"


def per_category_bars(dataset: str, groups: list[Group], metric: str, target: Path) -> Path | None:
    """Grouped bars: categories on x, one bar (mean over seeds, std as error bar) per configuration."""
    categories: list[str] = []
    for group in groups:
        categories += [c for c in group.categories if c not in categories]
    series = []
    for group in groups:
        means, stds = [], []
        for category in categories:
            values = group.metric_values(metric, category)
            means.append(np.mean(values) if values else np.nan)
            stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        if not np.all(np.isnan(means)):
            series.append((_config_label(group), np.array(means), np.array(stds)))
    if not series or not categories:
        return None
    width = 0.8 / len(series)
    positions = np.arange(len(categories))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(categories) * max(1, len(series)) ** 0.5 + 3), 4))
    for index, (label, means, stds) in enumerate(series):
        axis.bar(positions + index * width - 0.4 + width / 2, means, width, yerr=stds, label=label, capsize=2)
    axis.set_xticks(positions, categories, rotation=45, ha="right")
    axis.set_ylabel(f"{TITLES[metric]} (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{dataset}: {TITLES[metric]} per category")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars stay visible
    axis.grid(axis="y", alpha=0.3)
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
        (
            row["ms_per_image"],
            row[metric]["mean"],
            f"{row['method_label']} {row['shots']}-shot ({row['backbone']})",
        )
        for row in rows
        if row.get("ms_per_image") and row[metric]["mean"] is not None
    ]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for latency, value, label in points:
        axis.scatter(latency, value, s=30)
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
) -> Path | None:
    """Zero- vs few-shot: one line per method/backbone/prompts over shots; published values dashed."""
    figure = metric_vs_shots_figure(dataset, rows, published, metrics)
    return None if figure is None else save_figure(figure, target)


def metric_vs_shots_figure(
    dataset: str,
    rows: list[dict],
    published: list[dict],
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc"),
):
    """The metric-vs-shots figure (None without rows); the legend sits below the axes, off the points."""
    from anomaly_vlm.reporting.tables import published_value

    lines: dict[str, list[dict]] = {}
    for row in rows:
        lines.setdefault(f"{row['method_label']} ({row['backbone']}, {row['prompts']})", []).append(row)
    if not lines:
        return None
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for label, line_rows in lines.items():
            line_rows = sorted(line_rows, key=lambda r: r["shots"])
            shots = [r["shots"] for r in line_rows if r[metric]["mean"] is not None]
            means = [r[metric]["mean"] for r in line_rows if r[metric]["mean"] is not None]
            stds = [r[metric]["std"] or 0.0 for r in line_rows if r[metric]["mean"] is not None]
            if not shots:
                continue
            drawn = axis.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=f"ours: {label}")
            method = line_rows[0]["method"]
            paper = [(s, published_value(published, method, dataset, s, metric)[0]) for s in (0, 1, 2, 4, 8)]
            paper = [(s, v) for s, v in paper if v is not None]
            if paper:
                axis.plot(
                    *zip(*paper, strict=True),
                    linestyle="--",
                    marker="x",
                    color=drawn[0].get_color(),
                    label=f"paper: {method}",
                )
        all_shots = sorted({row["shots"] for row in rows})
        axis.set_xticks(all_shots)
        axis.set_xlabel("shots (normal reference images)")
        axis.set_ylabel(f"{TITLES[metric]} (%)")
        axis.set_title(f"{dataset}: {TITLES[metric]} vs shots")
        axis.grid(alpha=0.3)
        # Below the axes: inside, the legend sat on the points of the highest-scoring line.
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
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
    ]
    written.append(accuracy_vs_latency(dataset, rows, folder / f"{dataset}_accuracy_vs_latency.png"))
    written.append(metric_vs_shots(dataset, rows, published, folder / f"{dataset}_metric_vs_shots.png"))
    return [path for path in written if path is not None]
