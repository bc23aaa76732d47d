from __future__ import annotations

import os
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
