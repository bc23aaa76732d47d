"""Running an analysis's sweeps: ``train.py -m`` in a subprocess, one named sweep folder per part.

The sweep folders have fixed names (``analysis-<scale>-<analysis>-<part>``) and no timestamps, so running an
analysis again skips its finished jobs and resumes interrupted training (the project's multirun
behaviour); two analyses that run the same part (resolution and efficiency) share its folder and its
jobs. Any Hydra launcher works: ``hydra/launcher=joblib`` or ``hydra/launcher=slurm ...`` are extra
overrides, appended to every sweep.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from anomaly_vlm.reporting.results import RESULTS_FILE, read_results

log = logging.getLogger(__name__)

#: Where train.py lies: the checkout this package runs from.
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sweep:
    """One ``train.py -m`` command of an analysis.

    Args:
        part: the sweep's name within the analysis (the folder is ``analysis-<scale>-<part>``).
        overrides: the Hydra overrides, comma lists being swept.
        env: extra environment variables for the command (e.g. offline switches).
    """

    part: str
    overrides: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def folder_name(self, scale: str) -> str:
        return f"analysis-{scale}-{self.part}"


@dataclass
class SweepOutcome:
    """What running a sweep did: its folder, exit status, seconds, and the tail of its log on failure."""

    sweep: Sweep
    folder: Path
    returncode: int
    seconds: float
    log_tail: str = ""
    up_to_date: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def sweep_folder(sweep: Sweep, scale: str, output_root: str | Path) -> Path:
    """Where train.py writes the sweep (``<output root>/train/multiruns/<sweep folder>``)."""
    return Path(output_root) / "train" / "multiruns" / sweep.folder_name(scale)


def train_script() -> Path:
    script = REPO_ROOT / "train.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"train.py not found next to the package ({script}); run the analyses from a checkout"
        )
    return script


def sweep_command(sweep: Sweep, scale: str, extra: Sequence[str] = ()) -> list[str]:
    """The command line of a sweep (``extra``: launcher and user overrides, appended last so they win)."""
    return [
        sys.executable,
        str(train_script()),
        "-m",
        *sweep.overrides,
        f"sweep_name={sweep.folder_name(scale)}",
        *extra,
    ]


def _task_overrides(extra: Sequence[str]) -> list[str]:
    """The overrides of ``extra`` that reach the jobs' configs (launcher settings do not)."""
    return [item for item in extra if not item.lstrip("+~").startswith("hydra")]


def canonical(lines: Sequence[str]) -> frozenset[str]:
    """Overrides as ``key=<JSON of the parsed value>``: Hydra writes a job's ``false`` back as ``False``."""
    parser = OverridesParser.create()
    return frozenset(
        f"{override.get_key_element()}={json.dumps(override.value(), sort_keys=True, default=str)}"
        for override in parser.parse_overrides(list(lines))
    )


def expected_jobs(sweep: Sweep, scale: str, extra: Sequence[str] = ()) -> list[frozenset[str]]:
    """The task overrides of every job of the sweep, as Hydra's basic sweeper expands them."""
    parser = OverridesParser.create()
    lines = [*sweep.overrides, f"sweep_name={sweep.folder_name(scale)}", *_task_overrides(extra)]
    choices = []
    for override in parser.parse_overrides(lines):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [canonical(combination) for combination in itertools.product(*choices)]


def finished_jobs(folder: Path) -> list[frozenset[str]]:
    """The task overrides of every job below ``folder`` whose results.json is complete."""
    done = []
    for results in folder.glob(f"*/{RESULTS_FILE}"):
        overrides = results.parent / ".hydra" / "overrides.yaml"
        if overrides.is_file() and read_results(results) is not None:
            done.append(canonical(yaml.safe_load(overrides.read_text()) or []))
    return done


def is_up_to_date(sweep: Sweep, scale: str, output_root: str | Path, extra: Sequence[str] = ()) -> bool:
    """Whether every job of the sweep has a complete results.json already (then train.py need not start:
    it would only skip them all)."""
    folder = sweep_folder(sweep, scale, output_root)
    if not folder.is_dir():
        return False
    done = finished_jobs(folder)
    return all(any(job <= finished for finished in done) for job in expected_jobs(sweep, scale, extra))


def run_sweep(
    sweep: Sweep, scale: str, output_root: str | Path, extra: Sequence[str] = (), quiet: bool = False
) -> SweepOutcome:
    """Run (or resume) one sweep; finished jobs are skipped by train.py itself.

    Args:
        sweep: the sweep.
        scale: ``tiny`` or ``published`` (part of the folder name, so the two never mix).
        output_root: ``paths.output_root`` of the jobs.
        extra: launcher and other overrides appended to the command.
        quiet: keep the sweep's output (shown only when it fails).
    """
    if is_up_to_date(sweep, scale, output_root, extra):
        print(f"[analysis] sweep {sweep.folder_name(scale)}: every job finished already", flush=True)
        return SweepOutcome(sweep, sweep_folder(sweep, scale, output_root), 0, 0.0, up_to_date=True)
    command = [*sweep_command(sweep, scale, extra), f"paths.output_root={output_root}"]
    env = {**os.environ, **sweep.env}
    # The jobs import this checkout's package, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    log.info("sweep %s: %s", sweep.part, " ".join(command[1:]))
    print(f"[analysis] sweep {sweep.folder_name(scale)}", flush=True)
    start = time.perf_counter()
    completed = subprocess.run(
        command,
        cwd=Path.cwd(),
        env=env,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
    )
    seconds = time.perf_counter() - start
    tail = (completed.stdout or "")[-4000:] if completed.returncode and quiet else ""
    return SweepOutcome(sweep, sweep_folder(sweep, scale, output_root), completed.returncode, seconds, tail)
