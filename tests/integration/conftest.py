from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import run_python

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def run_entry_point(cache_dir):
    """Run train.py / evaluate.py in a subprocess with offline settings and a private cache."""

    def run(
        script: str, *overrides: str, expect_ok: bool = True, timeout: int = 300
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
        flags = [item for item in overrides if item.startswith("-")]
        overrides = [item for item in overrides if not item.startswith("-")]
        command = [
            sys.executable,
            str(REPO_ROOT / script),
            *flags,
            f"paths.cache_dir={cache_dir}",
            *overrides,
        ]
        result = run_python(command, cwd=REPO_ROOT, env=env, timeout=timeout)
        if expect_ok and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
            )
        return result

    return run


@pytest.fixture
def recorded_make(tmp_path):
    """Run a make target with ``PY=`` a recorder instead of Python: it logs each Python command line the
    recipe starts (with the ``DATA_ROOT`` and ``ANOMALY_VLM_WEIGHTS`` it sees) and fails, with exit status
    2, the first one that contains ``fail_on``. Returns make's result and the recorded command lines, so a
    test sees in a fraction of a second which commands a target starts, in which order, and that make stops
    at a failing check; the check itself then runs for real (``run_python``) on the recorded arguments."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    log = tmp_path / "recorded_commands"
    recorder = tmp_path / "recording_python"
    recorder.write_text(
        "#!/bin/sh\n"
        'printf "%s\\037" "DATA_ROOT=$DATA_ROOT" "ANOMALY_VLM_WEIGHTS=$ANOMALY_VLM_WEIGHTS" "$@"'
        f' >> "{log}"\n'
        f'printf "\\n" >> "{log}"\n'
        'case "$*" in *"$RECORDER_FAIL_ON"*) echo "recorder: fails here" >&2; exit 2;; esac\n'
    )
    recorder.chmod(0o755)

    def run(*arguments: str, fail_on: str, env: dict[str, str] | None = None):
        result = subprocess.run(
            [make, "--no-print-directory", *arguments, f"PY={recorder}", "STAMP=Makefile"],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {}), "RECORDER_FAIL_ON": fail_on},
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = log.read_text().splitlines() if log.exists() else []
        return result, [line.split("\037")[:-1] for line in lines]

    return run
