"""Sweeps end to end: kill and resume, DDP equals one process, reproduce targets fail fast."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from warm_python import run_python

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent / "helpers"
TINY_DATA = [
    "experiment=demo",
    "+data.num_train=2",
    "+data.num_test_good=2",
    "+data.num_test_per_defect=1",
    "num_overlays=0",
    "trainer.accelerator=cpu",
]


def _jobs(sweep_dir: Path) -> dict[int, Path]:
    """Job folders by seed (read from each job's recorded overrides; long folder names are hashed)."""
    jobs: dict[int, Path] = {}
    for folder in sorted(sweep_dir.iterdir()):
        overrides = folder / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            seed = next(line for line in overrides.read_text().splitlines() if line.startswith("- seed="))
            seed = int(seed.split("=")[1])
            assert seed not in jobs, f"two folders for seed {seed}: {jobs[seed].name} and {folder.name}"
            jobs[seed] = folder
    return jobs


def _run(
    args: list[str], tmp_path: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "ANOMALY_VLM_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(HELPERS), str(REPO_ROOT)]),
        **(env or {}),
    }
    return run_python([sys.executable, *args], cwd=REPO_ROOT, env=environment, timeout=timeout)


@pytest.mark.slow
def test_killed_sweep_resumes(tmp_path: Path, read_offline_run) -> None:
    """3 trainable jobs; the 2nd dies after its first epoch; the re-run skips job 1 and resumes job 2."""
    sweep = [
        "train.py",
        "-m",
        *TINY_DATA,
        "data.categories=[brick]",
        "train_data=synthetic",
        "train_data.categories=[nut]",
        "+train_data.num_train=2",
        "+train_data.num_test_good=2",
        "+train_data.num_test_per_defect=1",
        "method._target_=trainable_probe.TrainableProbe",
        "+method.seed=${seed}",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "logger=wandb",
        f"paths.output_root={tmp_path / 'out'}",
        "sweep_name=probe",
        "seed=0,1,2",
    ]
    first = _run(sweep, tmp_path, {"PROBE_KILL_SEED": "1", "WANDB_MODE": "offline"})
    first_log = (first.stdout + first.stderr)[-5000:]
    assert first.returncode == 17, first_log
    jobs = _jobs(tmp_path / "out/train/multiruns/probe")
    assert sorted(jobs) == [0, 1], first_log
    finished = jobs[0] / "results.json"
    # Hydra's basic launcher goes on to the next job when one raises, so job 1 dies (17) either way.
    assert finished.is_file(), (
        f"job 0 did not finish ({sorted(p.name for p in jobs[0].iterdir())}):\n{first_log}"
    )
    stamp = finished.stat().st_mtime_ns
    assert (jobs[1] / "checkpoints/last.ckpt").is_file() and not (jobs[1] / "results.json").exists()

    second = _run(sweep, tmp_path, {"WANDB_MODE": "offline"})
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "skipping finished job" in log and "resuming training from" in log
    assert finished.stat().st_mtime_ns == stamp  # job 0 untouched
    jobs = _jobs(tmp_path / "out/train/multiruns/probe")
    assert sorted(jobs) == [0, 1, 2] and all((p / "results.json").is_file() for p in jobs.values())
    # Job 1 restarted at epoch 1 with the gain learnt in epoch 0, not from scratch.
    starts = (jobs[1] / "probe_fit_starts.txt").read_text().split("\n")
    assert (
        starts[0].startswith("0 1.000000")
        and starts[1].startswith("1 ")
        and not starts[1].startswith("1 1.000000")
    )
    assert (jobs[2] / "probe_fit_starts.txt").read_text().startswith("0 1.000000")
    # Only trainable parameters are in the checkpoints.
    import torch

    state = torch.load(jobs[1] / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert list(state) == ["gain"]
    # Every job is its own W&B run (finished), grouped by the sweep, with training curves.
    for seed, folder in jobs.items():
        runs = sorted((folder / "wandb").glob("offline-run-*"))
        run = read_offline_run(runs[-1])
        assert run["group"] == "probe" and f"seed={seed}" in run["name"]
        assert f"seed:{seed}" in run["tags"] and "method:clip" in run["tags"]
        assert run["summary"]["test/image_auroc"] == pytest.approx(
            json.loads((folder / "results.json").read_text())["metrics"]["mean"]["image_auroc"]
        )
    curves = [
        row
        for path in sorted((jobs[2] / "wandb").glob("offline-run-*"))
        for row in read_offline_run(path)["history"]
    ]
    assert any("train/loss" in row for row in curves)


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    common = [
        *TINY_DATA,
        "logger=none",
        "data.categories=[brick,nut]",
        "+data.num_test_good=3",
        "datamodule.batch_size=2",
        "save_predictions=true",
    ]
    common = [c for c in common if c != "+data.num_test_good=2"]
    single = _run(["train.py", *common, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(
        ["train.py", *common, "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}"],
        tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in ddp.stdout + ddp.stderr
    one = json.loads((tmp_path / "one/results.json").read_text())
    two = json.loads((tmp_path / "two/results.json").read_text())
    for category, metrics in one["metrics"]["per_category"].items():
        for name, value in metrics.items():
            assert two["metrics"]["per_category"][category][name] == pytest.approx(value, abs=1e-6), (
                category,
                name,
            )
    rows_one = (tmp_path / "one/predictions/scores.csv").read_text().splitlines()
    rows_two = (tmp_path / "two/predictions/scores.csv").read_text().splitlines()
    # Same images in the same order, none padded or duplicated.
    assert [r.split(",")[:3] for r in rows_one] == [r.split(",")[:3] for r in rows_two]


def _reproduce(name: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    started = time.monotonic()
    result = subprocess.run(
        [
            make,
            "--no-print-directory",
            f"reproduce-{name}",
            f"PY={sys.executable}",
            "STAMP=Makefile",
            f"DATA_ROOT={tmp_path / 'no-data'}",
            f"OUTPUTS={tmp_path / 'out'}",
            f"OUT={tmp_path / 'reports'}",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, time.monotonic() - started


def _assert_clear_failure(
    name: str, result: subprocess.CompletedProcess, seconds: float, tmp_path: Path
) -> None:
    assert result.returncode != 0
    message = result.stdout + result.stderr
    experiment = name.replace("-", "_")
    if (REPO_ROOT / "conf/experiment" / f"{experiment}.yaml").exists():
        assert "dataset root does not exist" in message and "DATA_ROOT" in message
    else:
        assert f"Could not find 'experiment/{experiment}'" in message
    assert "preflight failed" in message
    assert not (tmp_path / "out").exists()  # stopped before any sweep started
    assert seconds < 120


def test_reproduce_without_data_fails_fast(tmp_path: Path, recorded_make) -> None:
    """The target's first command is the preflight, and make stops when it fails (recorded: no Python
    starts); the preflight, run for real on the recorded arguments, fails on the missing data. The whole
    target for real, Python included: test_every_reproduce_target_fails_fast_without_data (slow)."""
    data_root = tmp_path / "no-data"
    result, commands = recorded_make(
        "reproduce-winclip-mvtec",
        f"DATA_ROOT={data_root}",
        f"OUTPUTS={tmp_path / 'out'}",
        f"OUT={tmp_path / 'reports'}",
        fail_on="anomaly_vlm.tasks.preflight",
    )
    assert result.returncode != 0
    assert len(commands) == 1, commands  # stopped at the failed preflight: no sweep was started
    environment, _, *arguments = commands[0]
    assert environment == f"DATA_ROOT={data_root}"  # the preflight reads the DATA_ROOT given to make
    assert arguments[:3] == ["-m", "anomaly_vlm.tasks.preflight", "experiment=winclip_mvtec"]
    started = time.monotonic()
    preflight = run_python(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "DATA_ROOT": str(data_root)},
        timeout=300,
    )
    _assert_clear_failure("winclip-mvtec", preflight, time.monotonic() - started, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "winclip-mvtec",
        "winclip-visa",
        "aprillab-mvtec",
        "aprillab-visa",
        "anomalyclip-mvtec",
        "anomalyclip-visa",
        "adaclip-mvtec",
        "adaclip-visa",
        "aaclip-mvtec",
        "aaclip-visa",
        "faprompt-mvtec",
        "faprompt-visa",
        "bayespfl-mvtec",
        "bayespfl-visa",
        "anomalyclip-zeroshot-suite",
        "aaclip-zeroshot-suite",
        "aprillab-zeroshot-suite",
        "faprompt-zeroshot-suite",
        "bayespfl-zeroshot-suite",
    ],
)
def test_every_reproduce_target_fails_fast_without_data(name: str, tmp_path: Path) -> None:
    result, seconds = _reproduce(name, tmp_path)
    _assert_clear_failure(name, result, seconds, tmp_path)
