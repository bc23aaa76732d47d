"""Evaluation at the files' resolution (``datamodule.evaluation_resolution=file``) through the one
evaluation path: maps and ground truth at each file's size, overlays drawn at it, one size per category."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomaly_vlm.callbacks import CategoryEvaluation, CategoryScoring
from anomaly_vlm.data import AnomalyDataModule, DataError, MVTecLayout
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.tasks.categories import score_categories
from tests.unit.callbacks.test_scoring import _Mutual, _Recorder, _trainer


def test_maps_and_masks_at_the_files_resolution(tiny_backbone, tmp_path):
    source = SyntheticAD(
        tmp_path / "data", categories=["disc"], num_train=1, num_test_good=2, num_test_per_defect=1
    )
    file_size = Image.open(source.samples("disc", "test")[0].path).size
    assert file_size != (64, 64)
    # The inputs are 64 px (the test double reads no backbone); maps and masks come at the files' size.
    datamodule = AnomalyDataModule(source, 64, batch_size=2, evaluation_resolution="file")
    recorder, evaluator = _Recorder(), Evaluator()
    scoring = CategoryScoring([recorder, CategoryEvaluation(evaluator, tmp_path / "run", num_overlays=1)])
    score_categories(_trainer([scoring]), _Mutual(tiny_backbone), datamodule, scoring, {})
    (result,) = recorder.results
    width, height = file_size
    assert result.prediction.anomaly_map.shape[-2:] == (height, width) == result.masks.shape[-2:]
    assert result.masks.any()
    assert evaluator.results["disc"]["pixel_auroc"] is not None
    (overlay,) = (tmp_path / "run" / "overlays").rglob("*.png")
    assert Image.open(overlay).width == 3 * width  # image | heatmap | mask, at the map's resolution


def test_a_category_of_several_file_sizes_is_one_error(tiny_backbone, tmp_path):
    rng = np.random.default_rng(0)
    for name, size in [("000", (40, 30)), ("001", (30, 30))]:
        folder = tmp_path / "widget" / "test" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"{name}.png"
        )
    datamodule = AnomalyDataModule(MVTecLayout(tmp_path), 28, batch_size=4, evaluation_resolution="file")
    scoring = CategoryScoring([_Recorder()])
    with pytest.raises(DataError, match=r"several sizes \(30x30, 40x30 px.*evaluation_resolution=input"):
        score_categories(_trainer([scoring]), _Mutual(tiny_backbone), datamodule, scoring, {})
