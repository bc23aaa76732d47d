"""The readable per-category table printed at the end of every job."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from anomaly_vlm.metrics import METRIC_NAMES

#: Short column headers of the metrics, shared by the console and the paper tables.
METRIC_HEADERS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "pixel_aupro": "P-AUPRO",
}


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def metrics_table(
    per_category: dict[str, dict[str, float | None]], mean: dict[str, float | None], title: str = ""
) -> Table:
    """A rich table in percent, one row per category and a mean row."""
    table = Table(title=title, title_justify="left")
    table.add_column("category")
    for name in METRIC_NAMES:
        table.add_column(METRIC_HEADERS.get(name, name), justify="right")
    for category, metrics in per_category.items():
        table.add_row(category, *(_cell(metrics.get(name)) for name in METRIC_NAMES))
    table.add_section()
    table.add_row("mean", *(_cell(mean.get(name)) for name in METRIC_NAMES), style="bold")
    return table


def print_metrics_table(per_category, mean, title: str = "") -> None:
    Console().print(metrics_table(per_category, mean, title))
