"""``make reproduce-<method>-<data> CKPT=official``: tests the authors' release file, trains nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import run_python

REPO_ROOT = Path(__file__).resolve().parents[2]


def _make(tmp_path: Path, *arguments: str, weights: Path) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        [
            make,
            "--no-print-directory",
            *arguments,
            f"PY={sys.executable}",
            "STAMP=Makefile",
            f"DATA_ROOT={tmp_path / 'no-data'}",
            f"OUTPUTS={tmp_path / 'out'}",
            f"OUT={tmp_path / 'reports'}",
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            "ANOMALY_VLM_WEIGHTS": str(weights),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_run_of_the_target_tests_the_release_file(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    (weights / "aprillab").mkdir(parents=True)
    release = weights / "aprillab" / "visa_pretrained.pth"  # MVTec AD is tested with the VisA-trained file
    release.write_bytes(b"PK\x03\x04")
    result = _make(tmp_path, "-n", "reproduce-aprillab-mvtec", "CKPT=official", weights=weights)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "train.py" in line or "preflight" in line]
    assert len(lines) == 3 and all(
        "ckpt_path=$(" in line and "--path aprillab mvtec" in line for line in lines
    )


def test_a_missing_release_file_stops_before_any_job(tmp_path: Path, recorded_make) -> None:
    """The target first asks for the release file's path, and make stops when that fails (recorded: no
    Python starts); the command, run for real on the recorded arguments, names the missing file. The whole
    target for real: test_a_missing_release_file_stops_the_real_target (slow)."""
    weights = tmp_path / "empty"
    result, commands = recorded_make(
        "reproduce-anomalyclip-visa",
        "CKPT=official",
        f"DATA_ROOT={tmp_path / 'no-data'}",
        f"OUTPUTS={tmp_path / 'out'}",
        f"OUT={tmp_path / 'reports'}",
        env={"ANOMALY_VLM_WEIGHTS": str(weights)},
        fail_on="anomaly_vlm.tasks.official_checkpoints",
    )
    assert result.returncode != 0
    assert len(commands) == 1, commands  # stopped at the missing file: no preflight, no job
    _, environment, *arguments = commands[0]
    assert environment == f"ANOMALY_VLM_WEIGHTS={weights}"
    assert arguments == ["-m", "anomaly_vlm.tasks.official_checkpoints", "--path", "anomalyclip", "visa"]
    lookup = run_python(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            "ANOMALY_VLM_WEIGHTS": str(weights),
        },
        timeout=300,
    )
    assert lookup.returncode != 0
    assert "9_12_4_multiscale/epoch_15.pth is missing: run `make official-checkpoints`" in lookup.stderr


@pytest.mark.slow
def test_a_missing_release_file_stops_the_real_target(tmp_path: Path) -> None:
    # In the default suite: test_a_missing_release_file_stops_before_any_job (the same target, recorded).
    result = _make(tmp_path, "reproduce-anomalyclip-visa", "CKPT=official", weights=tmp_path / "empty")
    assert result.returncode != 0
    assert "9_12_4_multiscale/epoch_15.pth is missing: run `make official-checkpoints`" in result.stderr
    assert not (tmp_path / "out").exists()
