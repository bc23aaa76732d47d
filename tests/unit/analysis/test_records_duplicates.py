"""An analysis reads each run once: a result of the same configuration and replicate twice is reported."""

from __future__ import annotations

import logging

from anomaly_vlm.analysis.records import configurations, load_records


def test_a_run_found_twice_keeps_the_newer_and_says_so(results, caplog) -> None:
    first = results.write("a", method="winclip", score=0.5)
    second = results.write("b", method="winclip", score=0.7)  # written later: newer
    other_seed = results.write("b", method="winclip", score=0.9, seed=1)
    with caplog.at_level(logging.WARNING):
        records = load_records([results.root])
    assert sorted(record.path for record in records) == sorted([second, other_seed])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    named, kept = warning.split("kept")
    assert str(first.parent.name) in named and str(second.parent.name) in named and "job2" in kept
    (cell,) = configurations(records).values()
    assert cell.n == 2


def test_the_same_folder_twice_is_no_duplicate(results, caplog) -> None:
    results.write("a", method="winclip", score=0.5)
    with caplog.at_level(logging.WARNING):
        records = load_records([results.root, results.root / "train"])
    assert len(records) == 1 and not caplog.records
