"""Concurrent jobs with one training fingerprint: one trains, the others wait for its result."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from warm_python import submit_python

from anomaly_vlm.tasks import resume

REPO_ROOT = Path(__file__).resolve().parents[3]  # the holder imports this checkout's package

HOLDER = """
import sys, time
from pathlib import Path
from anomaly_vlm.tasks.resume import training_lock
shared = Path(sys.argv[1])
with training_lock(shared):
    print("locked", flush=True)
    time.sleep(0.8)
    shared.write_text("trained")
"""


def test_a_second_job_waits_for_the_training_job(tmp_path: Path) -> None:
    shared = tmp_path / "trained" / "abc.ckpt"
    holder = submit_python([sys.executable, "-c", HOLDER, str(shared)], cwd=REPO_ROOT, timeout=60)
    try:
        holder.wait_for_output("locked")
        started = time.monotonic()
        with resume.training_lock(shared):
            waited = time.monotonic() - started
            # The lock is only granted once the holder has published its result.
            assert shared.read_text() == "trained"
        # 0.5 s of the holder's 0.8 s spare for noticing "locked" (polled every 0.02 s) under load.
        assert waited > 0.3
    finally:
        result = holder.result()
    assert result.returncode == 0, result.stderr


def test_a_dead_holder_releases_the_lock(tmp_path: Path) -> None:
    shared = tmp_path / "abc.ckpt"
    holder = submit_python(
        [sys.executable, "-c", HOLDER.replace("time.sleep(0.8)", "import os; os._exit(3)"), str(shared)],
        cwd=REPO_ROOT,
        timeout=60,
    )
    holder.wait_for_output("locked")
    assert holder.result().returncode == 3
    with resume.training_lock(shared):
        assert not shared.exists()  # the killed job published nothing; this one trains itself
