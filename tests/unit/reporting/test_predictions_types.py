"""Saved predictions record each image's defect type, and read back per category."""

from __future__ import annotations

import numpy as np

from anomaly_vlm.reporting.predictions import PredictionWriter, read_predictions


def test_writer_records_defect_types_and_the_reader_returns_them(tmp_path):
    writer = PredictionWriter(tmp_path / "predictions")
    paths = ["/d/nut/test/good/0.png", "/d/nut/test/crack/0.png", "/d/nut/test/logical_anomalies/1.png"]
    maps = np.zeros((3, 4, 4), np.float32)
    maps[1, 1, 1] = 0.5
    writer.add(
        paths, ["nut"] * 3, [0, 1, 1], None, maps, None, defect_types=["good", "crack", "logical_anomalies"]
    )
    writer.finish_category("nut", np.array([0.1, 0.7, 0.4]))
    read = read_predictions(tmp_path / "predictions")["nut"]
    assert read.defect_types == ["good", "crack", "logical_anomalies"]
    assert read.labels.tolist() == [0, 1, 1] and np.allclose(read.scores, [0.1, 0.7, 0.4])
    assert read.keys == ["test/good/0.png", "test/crack/0.png", "test/logical_anomalies/1.png"]
    assert float(read.maps()[read.keys[1]][1, 1]) == 0.5
    assert read.masks() is None
    assert read_predictions(tmp_path / "nothing") == {}
