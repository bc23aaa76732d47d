"""Which method to pick: the best configuration per constraint, computed from the analyses' results.

Constraints (rows): no training data and no normal image (training-free zero-shot); auxiliary labelled
training data allowed, zero-shot; at most k normal images of the product (with or without auxiliary
data); a latency budget (runs timed without the feature cache only). Tasks (columns): image-level
detection. Each cell is the configuration with the highest mean over its replicates among those that
meet the constraint, with the runner-up and the ``results.json`` files behind the winner. Transductive
methods (which score each test image against the other test images) are marked: they need the test set
as a batch. With the limitations analysis's results, a last column states what the winner's method is
known to miss (small defects, a defect type, a corruption), measured at the method's standard setting.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from anomaly_vlm.analysis.records import Cell, Record, configurations, format_value
from anomaly_vlm.reporting.tables import markdown_table

TASKS = (("image task", "image_auroc"), ("pixel task", "pixel_auroc"))


@dataclass
class Choice:
    """The winner of one constraint and task."""

    constraint: str
    task: str
    metric: str
    winner: Cell | None
    runner_up: Cell | None
    candidates: int


def describe_cell(cell: Cell) -> str:
    """``"winclip, 4-shot, tiny @ 128 px"``: what a user would configure."""
    record = cell.records[0]
    text = f"{record.value('method')}, {record.value('shots')}-shot"
    if record.value("train_dataset"):
        text += f", trained on {record.value('train_dataset')}"
    text += f", {record.value('backbone')} @ {format_value(record.value('backbone.image_size'))} px"
    if record.value("transductive"):
        text += " (transductive)"
    return text


def _trains(record: Record) -> bool:
    return bool(record.value("train_dataset"))


def _timed(record: Record) -> bool:
    """Whether the run's latency is the model's: with the feature cache on, a job whose images were
    cached times the scoring alone, so only runs without the cache enter a latency budget."""
    return record.value("feature_cache.enabled") is False


def constraints(records: Sequence[Record]) -> list[tuple[str, Callable[[Record], bool]]]:
    """The constraints that the records can answer: shot counts and latency budgets present in them."""
    shots = sorted({int(r.value("shots") or 0) for r in records} - {0})
    rows: list[tuple[str, Callable[[Record], bool]]] = [
        ("no training data, no normal image", lambda r: int(r.value("shots") or 0) == 0 and not _trains(r)),
        ("auxiliary training data, no normal image", lambda r: int(r.value("shots") or 0) == 0),
    ]
    for k in shots:
        rows.append(
            (
                f"≤ {k} normal images, no training data",
                lambda r, k=k: int(r.value("shots") or 0) <= k and not _trains(r),
            )
        )
        rows.append(
            (f"≤ {k} normal images, auxiliary training data", lambda r, k=k: int(r.value("shots") or 0) <= k)
        )
    latencies = [v for r in records if _timed(r) and (v := r.efficiency("ms_per_image"))]
    if latencies:
        low, high = math.floor(math.log10(min(latencies))), math.ceil(math.log10(max(latencies)))
        for exponent in range(low + 1, high + 1):
            budget = 10.0**exponent
            rows.append(
                (
                    f"latency ≤ {budget:g} ms/image",
                    lambda r, budget=budget: (
                        _timed(r) and (r.efficiency("ms_per_image") or math.inf) <= budget
                    ),
                )
            )
    return rows


def select(records: Sequence[Record]) -> list[Choice]:
    """The best configuration per constraint and task."""
    cells = list(configurations(records).values())
    choices = []
    for name, allowed in constraints(records):
        pool = [cell for cell in cells if allowed(cell.records[0])]
        for task, metric in TASKS:
            ranked = sorted(
                (cell for cell in pool if cell.mean(metric) is not None),
                key=lambda cell: cell.mean(metric),
                reverse=True,
            )
            choices.append(
                Choice(
                    name,
                    task,
                    metric,
                    ranked[0] if ranked else None,
                    ranked[1] if len(ranked) > 1 else None,
                    len(ranked),
                )
            )
    return choices


def _cell_text(cell: Cell | None, metric: str) -> str:
    if cell is None:
        return "—"
    return f"{describe_cell(cell)}: {cell.mean(metric):.1f}"


WEAKNESS_HEADER = "known weaknesses of the winner's method"


def weakness_text(cell: Cell | None, weaknesses: Mapping[str, Sequence[str]]) -> str:
    """What the limitations analysis found the winner's method to miss (at its standard setting)."""
    if cell is None:
        return "—"
    method = str(cell.records[0].value("method"))
    if method not in weaknesses:
        return "not measured by the limitations analysis"
    return "; ".join(weaknesses[method]) or "none found"


def selection_rows(
    choices: Sequence[Choice], weaknesses: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, display rows and per-row sources (of the winners) of the selection table.

    Args:
        choices: the winners per constraint and task.
        weaknesses: per method what the limitations analysis found it to miss (a method measured with
            nothing found maps to an empty list); None leaves the column out.
    """
    header = ["constraint", "task", "best (mean %)", "runner-up", "candidates"]
    if weaknesses is not None:
        header.append(WEAKNESS_HEADER)
    rows, sources = [], []
    for choice in choices:
        row = [
            choice.constraint,
            f"{choice.task} ({choice.metric})",
            _cell_text(choice.winner, choice.metric),
            _cell_text(choice.runner_up, choice.metric),
            str(choice.candidates),
        ]
        if weaknesses is not None:
            row.append(weakness_text(choice.winner, weaknesses))
        rows.append(row)
        sources.append(choice.winner.sources if choice.winner else [])
    return header, rows, sources


def write_selection(
    choices: Sequence[Choice], stem: Path, weaknesses: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """``<stem>.md`` and ``<stem>.csv`` of the selection table; returns what :func:`selection_rows` does."""
    header, rows, sources = selection_rows(choices, weaknesses)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with stem.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "winner_sources"])
        for row, row_sources in zip(rows, sources, strict=True):
            writer.writerow([*row, ";".join(row_sources)])
    stem.with_suffix(".md").write_text(
        "# Method selection\n\nComputed from the results: the best configuration per constraint and task "
        "(mean over replicates).\n\n" + markdown_table(header, rows)
    )
    return header, rows, sources
