"""The one reader of finished runs: ``make tables`` and the analyses both load ``results.json`` here.

It finds the files below some folders, reads each file once (nested folders list the same file twice),
keeps the complete ones, and keeps one result per run: two results of the same configuration and
replicate are one run computed twice, so the newer is kept and the other is reported by name. What
makes two runs "the same configuration" is :func:`run_identity`: the named dimensions of the run
(method, backbone, prompt set, data, shots, ...) plus every config value that can change a number
(:func:`anomaly_vlm.reporting.identity.config_fields`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_vlm.reporting.identity import config_fields, uses_prompts
from anomaly_vlm.reporting.results import RESULTS_FILE, read_results
from anomaly_vlm.reporting.runs import replicate_of

log = logging.getLogger(__name__)

#: Dimensions read from the top level of ``results.json`` (everything else is a dotted config key).
TOP_LEVEL = (
    "method",
    "backbone",
    "prompts",
    "dataset",
    "train_dataset",
    "shots",
    "transductive",
    "untrained",
    "checkpoint_origin",
)

#: Replicates: runs that differ only in these are repetitions of one configuration (mean ± std).
REPLICATE_KEYS = ("seed", "reference_seed")


@dataclass
class Collection:
    """What :func:`read_runs` found.

    Attributes:
        runs: ``(path, results)`` of the kept runs, in the order found.
        counts: per folder given, ``(complete, skipped)`` results.json below it (skipped: a job still
            running or failed, a file that cannot be read).
    """

    runs: list[tuple[Path, dict]] = field(default_factory=list)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def find_result_files(folders: Iterable[str | Path], missing_ok: bool = False) -> list[Path]:
    """Every ``results.json`` below the given folders (or the files themselves).

    Raises:
        FileNotFoundError: a folder does not exist (unless ``missing_ok``: a sweep not run yet has none).
    """
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            files.append(folder)
        elif folder.is_dir():
            files.extend(sorted(folder.rglob(RESULTS_FILE)))
        elif not missing_ok:
            raise FileNotFoundError(f"results folder does not exist: {folder}")
    return files


def top_level_value(run: dict, key: str):
    """A named dimension of a run (None for ``prompts`` of a method that reads no prompt set)."""
    if key == "prompts" and not uses_prompts(run):
        return None
    return run.get(key)


def run_identity(run: dict) -> str:
    """Text that is equal for two runs exactly when they are the same configuration (replicates aside)."""
    named = {key: top_level_value(run, key) for key in TOP_LEVEL}
    named["aupro"] = run.get("aupro") or "exact"
    return json.dumps([named, config_fields(run)], sort_keys=True, default=str)


def read_runs(folders: Iterable[str | Path], missing_ok: bool = False) -> Collection:
    """The finished runs below ``folders``: each file read once, one result per run.

    Args:
        folders: folders (searched recursively) or ``results.json`` files.
        missing_ok: skip folders that do not exist instead of failing.

    Returns:
        The kept runs and the per-folder counts.
    """
    collection = Collection()
    read: dict[Path, dict | None] = {}
    kept: dict[tuple[str, tuple], int] = {}
    for folder in folders:
        found = find_result_files([folder], missing_ok=missing_ok)
        for path in found:
            resolved = Path(path).resolve()
            if resolved in read:
                continue
            run = read[resolved] = read_results(path)
            if run is None:
                continue
            key = (run_identity(run), replicate_of(run))
            if key in kept:
                index = kept[key]
                earlier_path, earlier = collection.runs[index]
                newer = str(run.get("created", "")) > str(earlier.get("created", ""))
                log.warning(
                    "duplicate results of one run (%s on %s, shots=%s, seed=%s): %s and %s; kept %s (the "
                    "newer), dropped the other",
                    run.get("method"),
                    run.get("dataset"),
                    run.get("shots"),
                    replicate_of(run)[0],
                    earlier_path,
                    path,
                    path if newer else earlier_path,
                )
                if newer:
                    collection.runs[index] = (Path(path), run)
                continue
            kept[key] = len(collection.runs)
            collection.runs.append((Path(path), run))
        complete = sum(read[Path(path).resolve()] is not None for path in found)
        collection.counts[str(folder)] = (complete, len(found) - complete)
    return collection
