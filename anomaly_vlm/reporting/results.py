"""``results.json``: the one record of a finished job that tables, sweeps and resumption read."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from anomaly_vlm.untrusted import UntrustedFileError, read_json

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1
_PACKAGES = ("torch", "torchvision", "open_clip_torch", "lightning", "hydra-core", "numpy", "scipy", "wandb")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        versions["anomaly_vlm"] = importlib.metadata.version("anomaly-vlm")
    except importlib.metadata.PackageNotFoundError:
        versions["anomaly_vlm"] = None
    return versions


def run_git(*args: str, timeout: float = 10.0) -> str | None:
    """Output of a git command in the checkout this package runs from (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        completed = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout


def git_commit() -> dict[str, Any]:
    """Commit of the checkout this package runs from (None outside a git checkout)."""
    commit = run_git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = run_git("status", "--porcelain", "--untracked-files=no") or ""
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def write_json_atomic(path: Path, payload: dict) -> Path:
    """Write JSON so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str))
    os.replace(temporary, path)
    return path


def read_results(path: Path) -> dict | None:
    """The results of a finished job, or None when absent, unreadable or incomplete.

    A results.json may be one someone shared: one over the size or nesting limits of
    :func:`anomaly_vlm.untrusted.read_json` is not read, and is logged (naming the file) and skipped.
    """
    try:
        payload = read_json(path, what="results.json")
    except UntrustedFileError as error:
        log.warning("skipped: %s", error)
        return None
    except OSError:
        return None
    return payload if isinstance(payload, dict) and payload.get("status") == "complete" else None


def build_results(
    *,
    config: dict,
    names: dict[str, str | None],
    per_category: dict[str, dict[str, float | None]],
    mean: dict[str, float | None],
    efficiency: dict[str, Any],
    seed: int,
    shots: int,
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict:
    """Assemble the results.json payload. Metric values are fractions in [0, 1] (None = absent)."""
    payload = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "method": names.get("method"),
        "backbone": names.get("backbone"),
        "prompts": names.get("prompts"),
        "dataset": names.get("data"),
        "train_dataset": names.get("train_data"),
        "shots": shots,
        "seed": seed,
        "metrics": {"mean": mean, "per_category": per_category},
        "efficiency": efficiency,
        "versions": package_versions(),
        "git": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - started, 3),
        "config": config,
    }
    if extra:
        payload.update(extra)
    return payload
