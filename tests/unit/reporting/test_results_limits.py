"""A shared ``results.json`` is read within size and nesting limits; a refused one is skipped, named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from anomaly_vlm.reporting.results import read_results


def _sparse(path: Path, size: int = 300 * 1024 * 1024) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)  # sparse: no disk space used
    return path


def test_a_refused_results_json_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    complete = tmp_path / "a" / "results.json"
    complete.parent.mkdir()
    complete.write_text(json.dumps({"status": "complete", "metrics": {}}))
    assert read_results(complete) == {"status": "complete", "metrics": {}}
    deep = tmp_path / "b.json"
    deep.write_text('{"status": "complete", "metrics": ' + "[" * 1000 + "]" * 1000 + "}")
    huge = _sparse(tmp_path / "c.json")
    listed = tmp_path / "d.json"
    listed.write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="anomaly_vlm.reporting.results"):
        assert read_results(deep) is None and read_results(huge) is None and read_results(listed) is None
    assert f"results.json {deep} nests" in caplog.text and f"results.json {huge} is 314.6 MB" in caplog.text
    assert read_results(tmp_path / "missing.json") is None
