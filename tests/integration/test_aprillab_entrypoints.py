"""Entry points with method=aprillab on the tiny CLIP and synthetic data: the few-shot multirun
protocol, checkpoint reload through evaluate.py, and what `-m` does with other sweeps.

Each runs several jobs in subprocesses (about a minute each on two cores), hence ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import run_python

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "experiment=aprillab_synthetic",
    "data.categories=[disc]",
    "train_data.categories=[nut]",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "logger=none",
]


def _run(script: str, args: list[str], tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "ANOMALY_VLM_CACHE": str(tmp_path)}
    command = [
        sys.executable,
        script,
        *args,
        f"paths.output_root={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path}",
    ]
    result = run_python(command, cwd=ROOT, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _jobs(tmp_path: Path, task: str = "train") -> list[dict]:
    found = sorted((tmp_path / "out" / task).rglob("results.json"))
    return [json.loads(path.read_text()) | {"_dir": str(path.parent)} for path in found]


@pytest.mark.slow
def test_dash_m_runs_three_reference_draws_and_evaluate_reloads_the_checkpoint(tmp_path):
    _run("train.py", ["-m", *SMALL, "shots=1"], tmp_path)
    jobs = _jobs(tmp_path)
    assert len(jobs) == 3
    draws = sorted(json.loads((Path(job["_dir"]) / "references.json").read_text())["seed"] for job in jobs)
    assert draws == [0, 1, 2]
    assert {job["config"]["seed"] for job in jobs} == {111}  # training keeps the published seed

    first = next(job for job in jobs if job["config"]["reference_seed"] == 0)
    checkpoint = Path(first["trained_checkpoint"])
    assert checkpoint.is_file()
    assert first["efficiency"]["train_seconds"] > 0  # the training wall time of the job that trained
    _run(
        "evaluate.py",
        [
            "experiment=aprillab_synthetic",
            "data.categories=[disc]",
            "logger=none",
            "shots=1",
            "reference_seed=0",
            f"ckpt_path='{checkpoint}'",
        ],
        tmp_path,
    )
    (evaluated,) = _jobs(tmp_path, "evaluate")
    assert evaluated["efficiency"]["train_seconds"] is None  # loaded from ckpt_path, not trained
    assert evaluated["metrics"]["mean"]["pixel_auroc"] == pytest.approx(
        first["metrics"]["mean"]["pixel_auroc"], abs=1e-6
    )
    assert evaluated["metrics"]["mean"]["image_auroc"] == pytest.approx(
        first["metrics"]["mean"]["image_auroc"], abs=1e-6
    )

    refused = _run(
        "evaluate.py",
        [
            "experiment=aprillab_synthetic",
            "data.categories=[disc]",
            "logger=none",
            "method.stages=[1,3,5,7]",
            f"ckpt_path='{checkpoint}'",
        ],
        tmp_path,
        check=False,
    )
    assert refused.returncode != 0
    assert "stages: checkpoint has [2, 4, 6, 8], this run has [1, 3, 5, 7]" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_dash_m_with_zero_shots_runs_once_and_explicit_sweeps_win(tmp_path):
    zero = tmp_path / "zero"
    _run("train.py", ["-m", *SMALL, "shots=0"], zero)
    assert len(_jobs(zero)) == 1

    explicit = tmp_path / "explicit"
    _run("train.py", ["-m", *SMALL, "shots=1", "reference_seed=5,6"], explicit)
    assert sorted(job["config"]["reference_seed"] for job in _jobs(explicit)) == [5, 6]

    combined = tmp_path / "combined"
    _run("train.py", ["-m", *SMALL, "reference_draws=2", "shots=1,2"], combined)
    pairs = sorted((job["shots"], job["config"]["reference_seed"]) for job in _jobs(combined))
    assert pairs == [(1, 0), (1, 1), (2, 0), (2, 1)]
