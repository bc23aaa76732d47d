"""A multirun leaves no folder for a job that wrote nothing: skipped repeats and jobs that failed at once."""

from __future__ import annotations

BASE = ("experiment=demo", "logger=none", "data.categories=[disc]", "num_overlays=0")


def test_repeated_zero_shot_draws_leave_no_folder(run_entry_point, tmp_path):
    sweep = tmp_path / "sweep"
    # reference_seed=0 finished earlier (skipped now, so the test runs no model): its folder is kept.
    finished = sweep / "data.categories=[disc],experiment=demo,reference_draws=2,reference_seed=0,shots=0"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text('{"status": "complete"}')
    run_entry_point(
        "train.py",
        "-m",
        *BASE,
        "shots=0",
        "reference_draws=2",
        "reference_seed=0,1",
        f"hydra.sweep.dir={sweep}",
    )
    # the repeat (reference_seed=1) was skipped and left nothing; the finished job is untouched
    assert sorted(path.name for path in sweep.iterdir() if path.is_dir()) == [finished.name]
    assert (finished / "results.json").read_text() == '{"status": "complete"}'
    assert (finished / ".hydra" / "config.yaml").is_file()


def test_a_job_that_fails_before_writing_anything_leaves_no_folder(run_entry_point, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_entry_point(
        "train.py", "-m", *BASE, "method=winclip", "shots=100", f"hydra.sweep.dir={sweep}", expect_ok=False
    )
    assert result.returncode == 1 and "error: shots=100" in result.stderr
    assert [path.name for path in sweep.iterdir()] == ["multirun.yaml"]
