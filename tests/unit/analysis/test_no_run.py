"""``--no-run`` redraws finished sweeps; without their results it says which sweeps to run and fails."""

from __future__ import annotations

from anomaly_vlm.analysis.analyses import CrossDomainAnalysis, ShotsAnalysis
from anomaly_vlm.analysis.run import main
from anomaly_vlm.analysis.sweeps import sweep_folder
from anomaly_vlm.wording import counted


def test_no_results_name_the_command_that_runs_the_sweeps(results, tmp_path, capsys):
    out = tmp_path / "reports"
    status = main(["shots", "--scale", "tiny", "--no-run", "--out", str(out), "--outputs", str(results.root)])
    assert status == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    first = ShotsAnalysis().sweeps("tiny")[0]  # the sweeps follow the method catalog
    folder = sweep_folder(first, "tiny", results.root)
    assert len(errors) == 1 and errors[0].startswith(
        f"error: analysis 'shots' (tiny) has no results in {folder} and "
    )
    assert errors[0].endswith(
        f"run them first: python -m anomaly_vlm.analysis shots --scale tiny --outputs {results.root}"
    )
    assert not out.exists()  # no manifest of nothing


def test_analyses_with_results_are_drawn_and_the_missing_ones_still_fail(results, tmp_path, capsys):
    results.write("layers-musc", method="musc", score=0.7, config={"method.layers": [3]})
    out = tmp_path / "reports"
    argv = [
        "layers",
        "shots",
        "--scale",
        "tiny",
        "--no-run",
        "--out",
        str(out),
        "--outputs",
        str(results.root),
    ]
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "analysis 'shots' (tiny) has no results" in errors[0]
    assert (out / "tiny" / "layers" / "manifest.json").is_file()
    assert not (out / "tiny" / "shots").exists()


def test_the_other_sweep_folders_are_counted(results, tmp_path, capsys):
    argv = [
        "crossdomain",
        "--scale",
        "tiny",
        "--no-run",
        "--out",
        str(tmp_path / "r"),
        "--outputs",
        str(results.root),
    ]
    assert main(argv) == 1
    others = len(CrossDomainAnalysis().sweeps("tiny")) - 1
    assert f" and {counted(others, 'more sweep folder')}: " in capsys.readouterr().err
