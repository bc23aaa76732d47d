"""Sweeps through ``hydra/launcher=slurm`` (hydra-submitit-launcher) on a real, local SLURM.

Marked ``slurm`` (outside the default suite): ``make test-slurm``. The cluster comes from
``conftest.py``; every run is tiny (tiny random CLIP, a few synthetic images, one or a few epochs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent / "helpers"
TINY = [
    "+data.num_train=2",
    "+data.num_test_good=2",
    "+data.num_test_per_defect=1",
    "num_overlays=0",
    "trainer.accelerator=cpu",
    "logger=none",
]
TINY_TRAINING = [
    "data.categories=[disc]",
    "train_data.categories=[grass]",
    "+train_data.num_test_good=3",
    "+train_data.num_test_per_defect=2",
]


def _launcher(cluster, **settings) -> list[str]:
    """The slurm launcher sized for this node: one CPU per job, no GPU, a short time limit."""
    values = {
        "partition": cluster.partition,
        "timeout_min": 10,
        "cpus_per_task": 1,
        "gpus_per_node": "null",
        "mem_gb": 1,
        "array_parallelism": 2,
        **settings,
    }
    return ["hydra/launcher=slurm", *(f"hydra.launcher.{key}={value}" for key, value in values.items())]


def _command(cluster, tmp_path: Path, sweep_name: str, *overrides: str) -> tuple[list[str], dict]:
    command = [
        sys.executable,
        "train.py",
        "-m",
        f"paths.output_root={tmp_path / 'out'}",
        f"sweep_name={sweep_name}",
        *overrides,
    ]
    # What the jobs inherit through sbatch (it exports the submitting environment): this checkout's
    # package and the test callbacks, offline switches and a private cache shared by the jobs.
    environment = cluster.env(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(HELPERS)]),
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        ANOMALY_VLM_CACHE=str(tmp_path / "cache"),
    )
    return command, environment


def _sweep(cluster, tmp_path: Path, sweep_name: str, *overrides: str) -> subprocess.CompletedProcess:
    command, environment = _command(cluster, tmp_path, sweep_name, *overrides)
    return subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=900
    )


def _results(sweep_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/results.json"))]


def _job_logs(sweep_dir: Path) -> dict[str, str]:
    """submitit's stdout + stderr of every job, by SLURM job id (``<array job>_<task>``)."""
    logs: dict[str, str] = {}
    for path in sorted((sweep_dir / ".submitit").glob("*/*_log.*")):
        logs[path.parent.name] = logs.get(path.parent.name, "") + path.read_text()
    return logs


def _submission_scripts(sweep_dir: Path) -> list[str]:
    """The distinct sbatch scripts (every task folder of an array links the array's one script)."""
    return sorted({path.read_text() for path in (sweep_dir / ".submitit").rglob("*submission*.sh")})


def _sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)$", script, flags=re.MULTILINE))


def test_demo_sweep_runs_as_an_array_with_logs_in_the_sweep_folder(slurm_cluster, tmp_path):
    result = _sweep(
        slurm_cluster, tmp_path, "demo", *_launcher(slurm_cluster), "experiment=demo", *TINY, "seed=0,1"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "out/train/multiruns/demo"
    results = _results(sweep_dir)
    assert sorted(payload["seed"] for payload in results) == [0, 1]
    assert all(payload["metrics"]["mean"]["image_auroc"] is not None for payload in results)

    # One array of two tasks; each task's stdout/stderr and the sbatch script are in the sweep folder.
    logs = _job_logs(sweep_dir)
    assert len(logs) == 2 and len({name.split("_")[0] for name in logs}) == 1, sorted(logs)
    assert all("Job completed successfully" in text for text in logs.values())
    assert any("seed=0" in text for text in logs.values()) and any("seed=1" in text for text in logs.values())
    (script,) = _submission_scripts(sweep_dir)
    options = _sbatch_options(script)
    assert options["partition"] == slurm_cluster.partition
    assert options["time"] == "10" and options["cpus-per-task"] == "1" and options["mem"] == "1GB"
    assert options["array"] == "0-1%2"
    assert not any(key.startswith("gpu") for key in options)  # gpus_per_node=null: a CPU job
    # The jobs run this interpreter (the project's virtual environment), through srun.
    assert f"--output {sweep_dir}/.submitit/" in script.replace("'", "")
    assert f"{sys.executable} -u -m submitit.core._submit" in script.replace("'", "")

    # Resubmitting the finished sweep runs two new jobs that skip their finished work.
    again = _sweep(
        slurm_cluster, tmp_path, "demo", *_launcher(slurm_cluster), "experiment=demo", *TINY, "seed=0,1"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    logs = _job_logs(sweep_dir)
    assert len(logs) == 4
    assert sum("skipping finished job" in text for text in logs.values()) == 2


def test_launcher_settings_reach_sbatch(slurm_cluster, tmp_path):
    """partition, time, cpus, gpus and array parallelism become #SBATCH lines that SLURM judges.

    The node has no GPU, so SLURM itself refuses the GPU request: proof that it reached the scheduler.
    """
    settings = {
        "partition": slurm_cluster.partition,
        "timeout_min": 7,
        "cpus_per_task": 2,
        "gpus_per_node": 1,
        "array_parallelism": 1,
    }
    result = _sweep(
        slurm_cluster,
        tmp_path,
        "settings",
        *_launcher(slurm_cluster, **settings),
        "+hydra.launcher.additional_parameters.comment=avlm-test",  # any other sbatch option
        "experiment=demo",
        *TINY,
        "seed=0,1,2",
    )
    assert result.returncode != 0
    assert "Requested node configuration is not available" in result.stdout + result.stderr
    (script,) = _submission_scripts(tmp_path / "out/train/multiruns/settings")
    options = _sbatch_options(script)
    assert options["partition"] == slurm_cluster.partition
    assert options["time"] == "7"
    assert options["cpus-per-task"] == "2"
    assert options["gpus-per-node"] == "1"
    assert options["array"] == "0-2%1"
    assert options["comment"] == "avlm-test"
    assert options["signal"] == "USR2@120"  # signal_delay_s
    # Refused at submission: no task ran, so no task folder exists.
    assert not [
        path for path in (tmp_path / "out/train/multiruns/settings/.submitit").iterdir() if path.is_dir()
    ]


def test_reference_draws_share_one_training_across_slurm_jobs(slurm_cluster, tmp_path):
    """Two array tasks start together; one trains, the other waits for it and loads its parameters."""
    result = _sweep(
        slurm_cluster,
        tmp_path,
        "shared",
        *_launcher(slurm_cluster),
        "experiment=aprillab_synthetic",
        *TINY,
        *TINY_TRAINING,
        "trainer.max_epochs=1",
        "shots=1",
        "reference_seed=0,1",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "out/train/multiruns/shared"
    results = _results(sweep_dir)
    assert sorted(payload["reference_seed"] for payload in results) == [0, 1]
    checkpoints = sorted(payload["trained_checkpoint"] for payload in results)
    own = [path for path in checkpoints if path.endswith("checkpoints/trained.ckpt")]
    shared = [path for path in checkpoints if f"{os.sep}trained{os.sep}" in path]
    assert len(own) == 1 and len(shared) == 1, checkpoints
    # The jobs saw the submitting environment: the shared file lies in this test's ANOMALY_VLM_CACHE.
    assert shared[0].startswith(str(tmp_path / "cache" / "trained")), shared
    trained = torch.load(own[0], map_location="cpu", weights_only=True)["state_dict"]
    reused = torch.load(shared[0], map_location="cpu", weights_only=True)["state_dict"]
    assert trained.keys() == reused.keys() and all(torch.equal(trained[k], reused[k]) for k in trained)
    logs = _job_logs(sweep_dir)
    assert len(logs) == 2
    assert sum("identical training already done by another job" in text for text in logs.values()) == 1
    # Training ran in exactly one job: only a training job writes checkpoints/last.ckpt every epoch.
    assert len(list(sweep_dir.glob("*/checkpoints/last.ckpt"))) == 1
    waited = any("another job is training identical parameters" in text for text in logs.values())
    print(f"second job waited on the training lock: {waited}")


def test_cancelled_job_resumes_from_its_last_checkpoint(slurm_cluster, tmp_path):
    """The job is cancelled while it waits at the start of its second epoch (a file barrier), so the
    cancel always lands after the first epoch's checkpoint and before training can finish."""
    arrived, release = tmp_path / "barrier.arrived", tmp_path / "barrier.release"
    overrides = [
        *_launcher(slurm_cluster),
        "experiment=aprillab_synthetic",
        *TINY,
        *TINY_TRAINING,
        "trainer.max_epochs=4",
        "reference_seed=0",
        "+callbacks.barrier._target_=epoch_barrier.EpochBarrier",
        "+callbacks.barrier.epoch=1",
        f"+callbacks.barrier.arrived={arrived}",
        f"+callbacks.barrier.release={release}",
    ]
    command, environment = _command(slurm_cluster, tmp_path, "resume", *overrides)
    sweep_dir = tmp_path / "out/train/multiruns/resume"
    launcher = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and launcher.poll() is None and not arrived.exists():
            time.sleep(0.2)
        assert arrived.exists(), "the job did not reach its second epoch before the deadline"
        (job_id,) = [job for job in slurm_cluster.jobs() if (sweep_dir / ".submitit" / job).is_dir()]
        slurm_cluster.command("scancel", job_id)
        assert slurm_cluster.wait_idle(60), "the cancelled job did not end"
    finally:
        # Without an accounting database submitit cannot learn that a job was cancelled and would wait
        # for its result forever; a cluster with sacct makes the launcher fail on its own.
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGINT)
        try:
            launcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    (last,) = sweep_dir.glob("*/checkpoints/last.ckpt")
    job_dir = last.parent.parent
    assert not (job_dir / "checkpoints/trained.ckpt").exists()
    assert not (job_dir / "results.json").exists()
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # one epoch done

    release.touch()  # the resubmitted job passes the barrier
    result = _sweep(slurm_cluster, tmp_path, "resume", *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (payload,) = _results(sweep_dir)
    assert payload["trained_checkpoint"] == str(job_dir / "checkpoints/trained.ckpt")
    logs = _job_logs(sweep_dir)
    assert len(logs) == 2  # the cancelled job and the resubmitted one
    resumed = logs[max(logs, key=lambda name: int(name.split("_")[0]))]
    assert f"resuming training from {last}" in resumed
    assert "Restored all states from the checkpoint" in resumed
