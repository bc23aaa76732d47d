"""Tables of the analyses (CSV and Markdown): one row per configuration, its sources in the last column."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anomaly_vlm.analysis.records import (
    Cell,
    Record,
    complete_dimensions,
    configurations,
    label_of,
    metric_variant,
    split_variants,
)
from anomaly_vlm.reporting.console import METRIC_HEADERS
from anomaly_vlm.reporting.tables import markdown_table

#: Efficiency columns: key, header, scale.
EFFICIENCY_COLUMNS = (
    ("ms_per_image", "ms/image", 1.0),
    ("flops_per_image", "GFLOPs/image", 1e-9),
    ("total_parameters", "params (M)", 1e-6),
    ("peak_cpu_memory_mb", "peak CPU MB", 1.0),
    ("peak_gpu_memory_mb", "peak GPU MB", 1.0),
)


@dataclass
class Table:
    """A written table: its title, header and rows as shown (for the HTML report), and its files."""

    title: str
    header: list[str]
    rows: list[list[str]]
    sources: list[list[str]]
    csv: Path
    markdown: Path


def metric_header(metric: str) -> str:
    """``I-AUROC``; a variant-dependent metric with its variant: ``P-AUPRO (official)``."""
    base, variant = metric_variant(metric)
    header = METRIC_HEADERS.get(base, base)
    return f"{header} ({variant})" if variant else header


def _cell_text(cell: Cell, metric: str) -> str:
    mean, std = cell.mean(metric), cell.std(metric)
    if mean is None:
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if len(cell.values(metric)) > 1 else f"{mean:.1f}"


def write_table(
    records: Sequence[Record],
    *,
    keys: Sequence[str],
    metrics: Sequence[str],
    title: str,
    stem: Path,
    efficiency: bool = False,
    sort_key=None,
) -> Table | None:
    """One row per configuration of ``records`` with the dimensions ``keys`` (completed with any other
    varying value), each metric as mean ± std over replicates (percent), optionally the efficiency
    figures, and the ``results.json`` files of the row.

    Writes ``<stem>.csv`` (mean and std in separate columns, sources joined by ``;``) and ``<stem>.md``.
    """
    records = list(records)
    if not records:
        return None
    keys = [*keys, *complete_dimensions(records, keys)]
    metrics = split_variants(records, metrics)  # a column per AUPRO variant, its name in the header
    cells = list(configurations(records).values())
    if sort_key is not None:
        cells.sort(key=lambda cell: sort_key(cell.records[0]))
    header = [label_of(key) for key in keys] + [metric_header(m) for m in metrics] + ["runs"]
    csv_header = [*keys]
    for metric in metrics:
        csv_header += [f"{metric}_mean", f"{metric}_std"]
    csv_header.append("n")
    if efficiency:
        header[-1:-1] = [title_ for _, title_, _ in EFFICIENCY_COLUMNS]
        csv_header += [key for key, _, _ in EFFICIENCY_COLUMNS]
    csv_header.append("sources")
    rows, csv_rows, sources = [], [], []
    for cell in cells:
        first = cell.records[0]
        dims = [first.display(key) for key in keys]
        row = [*dims, *(_cell_text(cell, m) for m in metrics)]
        line: list[str] = [*dims]
        for metric in metrics:
            mean, std = cell.mean(metric), cell.std(metric)
            line += ["" if mean is None else f"{mean:.3f}", "" if std is None else f"{std:.3f}"]
        line.append(str(cell.n))
        if efficiency:
            for key, _, scale in EFFICIENCY_COLUMNS:
                value = cell.efficiency_mean(key)
                row.append("—" if value is None else f"{value * scale:.3g}")
                line.append("" if value is None else f"{value * scale:.6g}")
        row.append(str(cell.n))
        line.append(";".join(cell.sources))
        rows.append(row)
        csv_rows.append(line)
        sources.append(cell.sources)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header)
        writer.writerows(csv_rows)
    listing = "\n".join(
        f"{index + 1}. " + ", ".join(f"`{source}`" for source in row_sources)
        for index, row_sources in enumerate(sources)
    )
    md_path.write_text(
        f"# {title}\n\nMean ± std over replicates (percent); `runs` = results.json files per row, "
        f"listed below in row order.\n\n{markdown_table(header, rows)}\n## Sources\n\n{listing}\n"
    )
    return Table(title, header, rows, sources, csv_path, md_path)


def write_rows(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    sources: Sequence[Sequence[str]],
    stem: Path,
) -> Table | None:
    """A table of rows computed elsewhere (e.g. from saved predictions): ``<stem>.csv`` and ``<stem>.md``,
    each row with the ``results.json`` files it was computed from. None for no rows."""
    if not rows:
        return None
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "sources"])
        for row, row_sources in zip(rows, sources, strict=True):
            writer.writerow([*row, ";".join(row_sources)])
    listing = "\n".join(
        f"{index + 1}. " + ", ".join(f"`{source}`" for source in row_sources)
        for index, row_sources in enumerate(sources)
    )
    md_path.write_text(
        f"# {title}\n\n{markdown_table(list(header), [list(r) for r in rows])}\n## Sources\n\n{listing}\n"
    )
    return Table(title, list(header), [list(r) for r in rows], [list(s) for s in sources], csv_path, md_path)
