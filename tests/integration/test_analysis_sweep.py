"""An analysis sweep for real: a one-job tiny sweep via train.py -m, read back, not relaunched when done."""

from __future__ import annotations

import subprocess
from pathlib import Path

from warm_python import run_python

from anomaly_vlm.analysis import sweeps
from anomaly_vlm.analysis.records import load_records
from anomaly_vlm.analysis.sweeps import Sweep, is_up_to_date, run_sweep

TINY = (
    "experiment=demo",
    "method=clip",
    # 64 px: the assertions read the records' seed and method and the sweep's folders, not map sizes
    "backbone.image_size=64",
    "logger=none",
    "num_overlays=0",
    "data.categories=[disc]",
    "+data.num_train=2",
    "+data.num_test_good=2",
    "+data.num_test_per_defect=1",
    "trainer.accelerator=cpu",
)


def _warm_run(command, *, cwd=None, env=None, stdout=None, stderr=None, **_) -> subprocess.CompletedProcess:
    """``subprocess.run`` as ``run_sweep`` calls it, through the tests' warm interpreter (the same
    ``train.py -m`` in its own process, without ~17 s of imports)."""
    result = run_python(command, cwd=cwd, env=env, timeout=600)
    merged = result.stdout + result.stderr if stderr == subprocess.STDOUT else result.stdout
    return subprocess.CompletedProcess(command, result.returncode, merged if stdout else None, None)


def test_sweep_runs_its_jobs_and_a_rerun_skips_them(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweeps.subprocess, "run", _warm_run)
    sweep = Sweep("it-clip", (*TINY, "seed=0"), {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    extra = [f"paths.cache_dir={cache_dir}"]
    first = run_sweep(sweep, "tiny", tmp_path / "outputs", extra, quiet=True)
    assert first.ok, first.log_tail
    assert first.folder == tmp_path / "outputs" / "train" / "multiruns" / "analysis-tiny-it-clip"
    records = load_records([first.folder])
    assert [record.value("seed") for record in records] == [0]
    assert all(
        record.value("method") == "clip" and not Path(record.source).is_absolute() for record in records
    )
    stamps = {record.path: record.path.stat().st_mtime_ns for record in records}
    again = run_sweep(sweep, "tiny", tmp_path / "outputs", extra, quiet=True)
    assert again.ok and again.up_to_date  # every job is finished: train.py is not even started
    # One more value in a swept list: the sweep is launched again (train.py then skips the finished job).
    assert not is_up_to_date(
        Sweep("it-clip", (*TINY, "seed=0,1"), sweep.env), "tiny", tmp_path / "outputs", extra
    )
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
