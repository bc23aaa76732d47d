"""A multirun checks every job before the first starts and reports all bad jobs at once."""

from __future__ import annotations

from anomaly_vlm.tasks.sweep_check import sweep_jobs


def test_sweep_jobs_is_the_product_of_the_swept_lists():
    jobs = sweep_jobs(["method=clip,aprillab", "shots=0,1", "logger=none"])
    assert jobs == [
        ["method=clip", "shots=0", "logger=none"],
        ["method=clip", "shots=1", "logger=none"],
        ["method=aprillab", "shots=0", "logger=none"],
        ["method=aprillab", "shots=1", "logger=none"],
    ]


def test_a_sweep_with_bad_jobs_reports_them_all_and_starts_none(run_entry_point, tmp_path):
    result = run_entry_point(
        "train.py",
        "-m",
        "experiment=demo",
        "logger=none",
        "method=clip,aprillab",
        "shots=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        expect_ok=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # clip is zero-shot only (shots=1); APRIL-GAN trains and has no train_data (both shots).
    assert len(errors) == 4, result.stderr[-2000:]
    assert (
        errors[0].startswith("error: method=clip shots=1 experiment=demo logger=none") or "clip" in errors[0]
    )
    assert sum("aprillab" in line for line in errors[:3]) == 2
    assert "3 of 4 jobs of this sweep cannot run" in errors[-1]
    assert not list((tmp_path / "sweep").rglob("results.json"))
