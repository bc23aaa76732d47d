"""A finished sweep job asked to keep its maps runs again when it saved none, else it is skipped."""

from __future__ import annotations

import json

from anomaly_vlm.tasks import resume
from anomaly_vlm.tasks.outputs import guard_finished_run


def _finished(folder):
    (folder / "results.json").write_text(json.dumps({"status": "complete", "metrics": {"mean": {}}}))


def test_a_finished_job_without_predictions_runs_again_when_asked_for_them(tmp_path, monkeypatch):
    monkeypatch.setattr(resume, "in_multirun", lambda: True)
    _finished(tmp_path)
    (tmp_path / "overlays").mkdir()
    assert guard_finished_run(tmp_path, overwrite=False) is not None  # not asked: skipped
    assert guard_finished_run(tmp_path, overwrite=False, needs_predictions=True) is None  # runs again
    assert not (tmp_path / "overlays").exists()  # the earlier run's artefacts are not mistaken for its own


def test_a_finished_job_with_predictions_is_still_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(resume, "in_multirun", lambda: True)
    _finished(tmp_path)
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "scores.csv").write_text("path,category,label,score,defect_type\n")
    assert guard_finished_run(tmp_path, overwrite=False, needs_predictions=True) is not None
