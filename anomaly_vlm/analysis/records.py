"""One record per finished job: its ``results.json``, where it lies, and the dimensions it varies in.

An analysis never reads a number from anywhere else, so every cell of its tables and every point of its
figures can name the ``results.json`` files it was computed from (:attr:`Record.source`).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from anomaly_vlm.reporting.collection import REPLICATE_KEYS, TOP_LEVEL, read_runs
from anomaly_vlm.reporting.identity import config_fields, uses_prompts

log = logging.getLogger(__name__)

#: Readable names of the dimensions the analyses plot.
DIMENSION_LABELS = {
    "method": "method",
    "backbone": "backbone",
    "prompts": "prompt set",
    "dataset": "test data",
    "train_dataset": "training data",
    "shots": "shots",
    "backbone.image_size": "input size (px)",
    "method.stages": "stages (tap blocks)",
    "method.layers": "layers (tap blocks)",
    "prompts.ablation": "prompt ablation",
    "method.text_aggregation": "text aggregation",
    "data.categories": "test categories",
    "train_data.categories": "training categories",
}


#: Metrics whose value depends on a variant the run chose (``metrics.aupro``, recorded as ``aupro``): two
#: variants are never averaged, put in one column or drawn in one panel. ``pixel_aupro@official`` is the
#: metric of the runs that computed that variant (:func:`split_variants`).
VARIANT_METRICS = {"pixel_aupro": "aupro"}
VARIANT_SEPARATOR = "@"


def aupro_variant(run: dict) -> str:
    """The AUPRO variant a run computed (``exact`` for results written before it was recorded)."""
    return str(run.get("aupro") or config_value(run.get("config") or {}, "metrics.aupro") or "exact")


def split_variants(records: Sequence[Record], metrics: Sequence[str]) -> list[str]:
    """``metrics`` with each variant-dependent metric replaced by one per variant among the records
    (``pixel_aupro`` -> ``pixel_aupro@exact``, ``pixel_aupro@official``): a column or panel each."""
    split: list[str] = []
    for metric in metrics:
        if metric not in VARIANT_METRICS or VARIANT_SEPARATOR in metric:
            split.append(metric)
            continue
        variants = sorted({record.variant(metric) for record in records}, key=lambda v: (v != "exact", v))
        split += [f"{metric}{VARIANT_SEPARATOR}{variant}" for variant in variants or ["exact"]]
    return split


def metric_variant(metric: str) -> tuple[str, str | None]:
    """``("pixel_aupro", "official")`` for ``pixel_aupro@official``; ``(metric, None)`` otherwise."""
    base, _, variant = metric.partition(VARIANT_SEPARATOR)
    return base, variant or None


def label_of(key: str) -> str:
    """The readable name of a dimension (the key itself when it has none)."""
    return DIMENSION_LABELS.get(key, key)


def _relative(path: Path) -> str:
    """The path relative to the working directory when below it (reports stay portable), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _under_prompts(key: str) -> bool:
    return key == "prompts" or key.startswith("prompts.")


def config_value(config: dict, key: str) -> Any:
    """The value of a dotted key in a nested config (None when absent)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True)
class Record:
    """A complete ``results.json`` and the path it was read from.

    Args:
        path: the file.
        run: its parsed content.
    """

    path: Path
    run: dict = field(repr=False)

    @property
    def source(self) -> str:
        """The file as written into tables, figures and the report."""
        return _relative(self.path)

    def value(self, key: str) -> Any:
        """A dimension: a top-level field (``method``, ``shots``, ...) or a dotted config key."""
        if _under_prompts(key) and not uses_prompts(self.run):
            return None
        if key in TOP_LEVEL or key in REPLICATE_KEYS:
            return self.run.get(key)
        return config_value(self.run.get("config") or {}, key)

    def has(self, key: str) -> bool:
        """Whether the run has the dimension at all (a config key of another method has none, nor has a
        method that reads no prompt set a ``prompts`` dimension)."""
        if _under_prompts(key) and not uses_prompts(self.run):
            return False
        if key in TOP_LEVEL or key in REPLICATE_KEYS:
            return True
        node: Any = self.run.get("config") or {}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def display(self, key: str) -> str:
        """The value as a table or legend shows it: ``—`` where the run has no such key."""
        return format_value(self.value(key)) if self.has(key) else "—"

    def metric(self, name: str) -> float | None:
        """A mean metric in percent (None when the job has none, e.g. pixel metrics without masks)."""
        value = ((self.run.get("metrics") or {}).get("mean") or {}).get(name)
        return None if value is None else 100.0 * float(value)

    def efficiency(self, key: str) -> float | None:
        value = (self.run.get("efficiency") or {}).get(key)
        return None if value is None else float(value)

    def variant(self, metric: str) -> str | None:
        """The variant of a variant-dependent metric this run computed (e.g. its AUPRO), else None."""
        return aupro_variant(self.run) if metric in VARIANT_METRICS else None

    def measure(self, name: str) -> float | None:
        """A metric in percent, or an efficiency figure (``ms_per_image``, ...) as recorded.

        ``pixel_aupro@official`` is the AUPRO of a run that computed the official variant, None for others.
        """
        base, variant = metric_variant(name)
        if variant is not None:
            return self.metric(base) if self.variant(base) == variant else None
        if name in ((self.run.get("metrics") or {}).get("mean") or {}):
            return self.metric(name)
        return self.efficiency(name)

    def fields(self) -> dict[str, str]:
        """Every value that can set this run apart from another configuration (JSON text per key)."""
        return self._fields

    @cached_property
    def _fields(self) -> dict[str, str]:
        flat = config_fields(self.run)
        for key in TOP_LEVEL:
            flat[key] = json.dumps(self.value(key), sort_keys=True, default=str)
        return flat

    def provenance(self) -> dict[str, Any]:
        """What the report shows for this number: file, git commit, versions, when, overrides."""
        return {
            "source": self.source,
            "created": self.run.get("created"),
            "git": self.run.get("git"),
            "versions": self.run.get("versions"),
            "duration_s": self.run.get("duration_s"),
        }


def load_records(folders: Iterable[str | Path]) -> list[Record]:
    """Every finished run below the folders, one record per run
    (:func:`~anomaly_vlm.reporting.collection.read_runs`; missing folders are skipped: a sweep that has
    not run yet has none)."""
    return [Record(path, run) for path, run in read_runs(folders, missing_ok=True).runs]


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying_keys(records: Sequence[Record]) -> list[str]:
    """Every dimension (top-level field or config key) whose value differs between the records."""
    fields = [record.fields() for record in records]
    keys = sorted({key for flat in fields for key in flat})
    return [key for key in keys if len({flat.get(key) for flat in fields}) > 1]


def explains(records: Sequence[Record], by: Sequence[str], key: str) -> bool:
    """Whether ``key`` is a function of the dimensions ``by`` among the records (e.g. ``data.image_size``
    follows ``backbone.image_size``; every ``method.*`` key follows ``method`` unless swept itself)."""
    seen: dict[str, str | None] = {}
    for record in records:
        flat = record.fields()
        group = dump([flat.get(name, dump(record.value(name))) for name in by])
        value = flat.get(key)
        if seen.setdefault(group, value) != value:
            return False
    return True


def complete_dimensions(records: Sequence[Record], shown: Sequence[str]) -> list[str]:
    """The dimensions that must be named besides ``shown`` so no two different configurations look alike.

    Every key that varies among the records and is not determined by the shown dimensions (and those
    already added) is added, in name order. A figure adds them to its series labels.
    """
    added: list[str] = []
    for key in varying_keys(records):
        if key in shown or key in added:
            continue
        if not explains(records, [*shown, *added], key):
            added.append(key)
    return added


@dataclass
class Cell:
    """The records of one configuration: mean and spread over its replicates, and their files."""

    records: list[Record]

    def values(self, metric: str) -> list[float]:
        return [v for record in self.records if (v := record.measure(metric)) is not None]

    def efficiency_values(self, key: str) -> list[float]:
        return [v for record in self.records if (v := record.efficiency(key)) is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        if not values:
            return None
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def efficiency_mean(self, key: str) -> float | None:
        values = self.efficiency_values(key)
        return statistics.fmean(values) if values else None

    @property
    def sources(self) -> list[str]:
        return sorted(record.source for record in self.records)

    @property
    def n(self) -> int:
        return len(self.records)


def configurations(records: Sequence[Record]) -> dict[str, Cell]:
    """Records grouped by everything but the replicate seeds; a replicate seen twice keeps the newest."""
    cells: dict[str, dict[str, Record]] = {}
    for record in records:
        key = dump(record.fields())
        replicate = dump([record.value(name) for name in REPLICATE_KEYS])
        kept = cells.setdefault(key, {}).get(replicate)
        if kept is None or str(kept.run.get("created", "")) < str(record.run.get("created", "")):
            cells[key][replicate] = record
    return {key: Cell(list(by_replicate.values())) for key, by_replicate in cells.items()}


def group_by(records: Sequence[Record], keys: Sequence[str]) -> dict[tuple, list[Record]]:
    """Records by the values of ``keys`` (values JSON-encoded, so lists are hashable), in first-seen order."""
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(tuple(dump(record.value(key)) for key in keys), []).append(record)
    return groups


def describe(record: Record, keys: Sequence[str]) -> str:
    """``"method=aprillab, tap blocks=[2]"``: the values of ``keys`` for a legend or a table row."""
    return ", ".join(f"{label_of(key)}={record.display(key)}" for key in keys if record.has(key))


def format_value(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, list):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


def environment_root() -> str:
    """The output root the sweeps write to (``$ANOMALY_VLM_OUTPUTS`` or ``outputs``), as train.py uses it."""
    return os.environ.get("ANOMALY_VLM_OUTPUTS", "outputs")
