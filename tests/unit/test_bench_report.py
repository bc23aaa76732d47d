"""The shared report of the parity harnesses and benchmarks (``bench/report.py``): verdict, exit, JSON."""

import json
import math

import numpy as np
import pytest

from bench.report import BenchReport, ParityReport, Row


def _report(*rows: tuple) -> ParityReport:
    report = ParityReport("aprillab", official={"folder": "official", "commit": None}, settings={"images": 3})
    report.echo = False
    for row in rows:
        report.add(*row)
    return report


def test_every_quantity_within_target_passes_with_exit_status_0():
    report = _report(("final map", 5e-6), ("gradient", 3e-5, 1e-4, "rel"), ("AUPRO", 1e-16, 1e-6))
    assert report.passed and report.exit_status() == 0
    # the closest row relative to its own target: 3e-5 of 1e-4 beats 5e-6 of 1e-4 and 1e-16 of 1e-6
    assert report.verdict() == "PASS: all 3 quantities within target (closest: gradient 3.00e-05)"


def test_a_quantity_over_its_target_fails_with_a_nonzero_exit_status(capsys):
    report = _report(("final map", 5e-6), ("image score", 2e-4), ("gradient", 2e-3, 1e-3, "rel"))
    assert not report.passed and report.exit_status() == 1
    assert [row.quantity for row in report.misses] == ["image score", "gradient"]
    assert report.verdict() == "FAIL: 2 of 3 quantities miss their target: image score, gradient"
    assert report.finish() == 1
    assert capsys.readouterr().out.strip() == report.verdict()


def test_the_printed_row_says_ok_or_miss(capsys):
    report = ParityReport("musc")
    report.add("tokens block 6", 0.0)
    report.add("final maps", 2e-4)
    report.add("text classifier", 0.5, target=None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("max|d| = 0.00e+00 (abs, target <= 1e-04) ok")
    assert lines[1].endswith("max|d| = 2.00e-04 (abs, target <= 1e-04) MISS")
    assert lines[2].endswith("max|d| = 5.00e-01 (abs, not checked)")


def test_nan_fails_and_an_exact_target_takes_zero_only():
    assert not _report(("map", float("nan"))).passed
    exact = _report(("token ids", 0.0, 0.0), ("map", 1e-5))
    assert exact.passed and "closest: map" in exact.verdict()
    assert not _report(("token ids", 1.0, 0.0)).passed
    assert not _report(("token ids", math.inf, 0.0)).passed


def test_unchecked_rows_never_decide_and_nothing_checked_is_a_failure():
    assert _report(("text classifier", 1.0, None), ("map", 1e-6)).passed
    only_shown = _report(("text classifier", 0.0, None))
    assert not only_shown.passed and only_shown.verdict() == "FAIL: no quantity was checked"


def test_a_row_kind_is_abs_or_rel():
    with pytest.raises(ValueError, match="kind"):
        Row("map", 0.0, 1e-4, "relative")


def test_parity_report_json_round_trip(tmp_path, capsys):
    report = _report(("final map", 5e-6), ("token ids", math.inf, 0.0), ("text", 0.1, None))
    report.notes.append("shrunk ViT-L-14-336")
    path = tmp_path / "out" / "aprillab.json"
    assert report.finish(path) == 1
    assert f"report: {path}" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["verdict"] == "FAIL" and data["method"] == "aprillab"
    assert data["rows"][0] == {
        "quantity": "final map",
        "max_delta": 5e-6,
        "target": 1e-4,
        "kind": "abs",
        "ok": True,
    }
    assert data["rows"][1]["ok"] is False and data["torch"] and data["date"]
    loaded = ParityReport.read_json(path)
    assert loaded == report
    assert loaded.verdict() == report.verdict()


def test_bench_report_json_round_trip(tmp_path):
    report = BenchReport("metrics", settings={"images": 16, "work": tmp_path}, status=1)
    report.results.update(wall_s=np.float32(1.5), counts=[np.int64(10), 20], agree=True)
    path = tmp_path / "metrics.json"
    report.write_json(path)
    loaded = BenchReport.read_json(path)
    assert loaded.results == {"wall_s": 1.5, "counts": [10, 20], "agree": True}
    assert loaded.settings == {"images": 16, "work": str(tmp_path)}
    assert loaded.environment["torch"] and loaded.benchmark == "metrics" and loaded.status == 1
