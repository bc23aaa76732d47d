"""Your own datasets are told apart by their root; a result dropped as a duplicate is always reported."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from anomaly_vlm.reporting import tables
from anomaly_vlm.reporting.results import write_json_atomic

FOLDER = "anomaly_vlm.data.datasets.FolderDataset"
MVTEC = "anomaly_vlm.data.datasets.MVTecAD"


def _result(folder: Path, target: str, root: str, dataset: str, score: float, created: str) -> Path:
    path = folder / "results.json"
    config = {
        "seed": 0,
        "data": {"_target_": target, "root": root, "categories": None},
        "paths": {"output_dir": str(path.parent)},
    }
    metrics = {"image_auroc": score}
    payload = {
        "status": "complete",
        "method": "winclip",
        "backbone": "vit_b16_plus_240",
        "prompts": "winclip",
        "dataset": dataset,
        "shots": 0,
        "seed": 0,
        "metrics": {"mean": metrics, "per_category": {"part": metrics}},
        "created": created,
        "config": config,
    }
    return write_json_atomic(path, payload)


def test_two_folders_of_your_own_are_two_rows_named_by_their_root(tmp_path: Path, caplog) -> None:
    _result(tmp_path / "a", FOLDER, "/data/line_a/parts", "folder", 0.9, "2026-01-01")
    _result(tmp_path / "b", FOLDER, "/data/line_b/parts", "folder", 0.6, "2026-01-02")
    with caplog.at_level(logging.WARNING):
        tables.make_tables([tmp_path], tmp_path / "out", plots=False)
    rows = list(csv.DictReader((tmp_path / "out" / "folder_summary.csv").open()))
    assert sorted(float(row["image_auroc_mean"]) for row in rows) == [60.0, 90.0]
    # Shown by the part of the path that tells them apart, not the whole absolute path.
    assert sorted(row["variant"] for row in rows) == ["data.root=…/line_a/parts", "data.root=…/line_b/parts"]
    assert "duplicate" not in caplog.text


def test_a_benchmark_in_two_places_is_one_dataset_and_the_dropped_duplicate_is_reported(
    tmp_path: Path, caplog
) -> None:
    old = _result(tmp_path / "a", MVTEC, "/disk1/mvtec", "mvtec", 0.9, "2026-01-01")
    new = _result(tmp_path / "b", MVTEC, "/disk2/mvtec", "mvtec", 0.6, "2026-01-02")
    with caplog.at_level(logging.WARNING):
        (group,) = tables.collect([tmp_path])
    assert group.metric_values("image_auroc") == [60.0]
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert str(old) in warning and str(new) in warning and f"kept {new}" in warning


def test_the_same_file_read_twice_is_no_duplicate(tmp_path: Path, caplog) -> None:
    _result(tmp_path / "a", MVTEC, "/disk1/mvtec", "mvtec", 0.9, "2026-01-01")
    with caplog.at_level(logging.WARNING):
        (group,) = tables.collect([tmp_path, tmp_path / "a"])
    assert len(group.runs) == 1 and not caplog.records


def test_a_run_from_before_the_readers_moved_is_the_same_configuration(tmp_path: Path) -> None:
    # Older versions recorded the reader at its former path (anomaly_vlm/data/mvtec.py).
    _result(tmp_path / "a", "anomaly_vlm.data.mvtec.MVTecAD", "/data/mvtec", "mvtec", 0.9, "2026-01-01")
    _result(tmp_path / "b", MVTEC, "/data/mvtec", "mvtec", 0.6, "2026-01-02")
    (group,) = tables.collect([tmp_path])
    assert group.metric_values("image_auroc") == [60.0]
