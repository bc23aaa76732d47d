"""The one evaluation path: inductive and transductive methods, set-level post-processing, consumers."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from anomaly_vlm.callbacks import CategoryEvaluation, CategoryResult, CategoryScoring
from anomaly_vlm.callbacks.scoring import drawing_order
from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.tasks.categories import score_categories

PROMPTS = PromptSet("test", ["good {}"], ["bad {}"], ["{}"])


class _MutualModel(nn.Module):
    """Scores each image by how far its mean colour lies from the other images of the SAME set."""

    cacheable = True
    transductive = True

    def __init__(self) -> None:
        super().__init__()
        self.set_sizes: list[int] = []
        self.postprocessed: list[int] = []

    def feature_spec(self) -> dict:
        return {"method": "mutual"}

    def frozen_features(self, images: Tensor) -> FrozenFeatures:
        return {"colour": images.mean(dim=(2, 3)), "pixels": images.mean(dim=1)}

    def score_set(self, features: FrozenFeatures) -> Prediction:
        colour = features["colour"]
        self.set_sizes.append(len(colour))
        others = (colour.sum(0, keepdim=True) - colour) / max(len(colour) - 1, 1)
        scores = (colour - others).norm(dim=-1)
        maps = (features["pixels"] - features["pixels"].mean(0, keepdim=True)).abs()
        return Prediction(scores, maps, {"raw": scores.clone()})

    def postprocess_set(self, prediction: Prediction) -> Prediction:
        self.postprocessed.append(len(prediction))
        scores = prediction.image_score / prediction.image_score.max()
        return Prediction(scores, prediction.anomaly_map, prediction.extras)


class _Mutual(AnomalyMethod):
    """Paper: none (test double of a transductive method)."""

    method_name = "mutual"
    supports_few_shot = False

    def __init__(self, backbone: nn.Module) -> None:
        model = _MutualModel()
        model.backbone = backbone
        super().__init__(model, PROMPTS)
        self.categories_set_up: list[str] = []

    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        self.categories_set_up.append(category)


class _Recorder:
    images_wanted = 1

    def __init__(self) -> None:
        self.results: list[CategoryResult] = []

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        self.results.append(result)


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> AnomalyDataModule:
    source = SyntheticAD(
        tmp_path_factory.mktemp("scoring"),
        categories=["disc", "nut"],
        image_size=64,  # files at 64 px (a quarter of the generation); the datamodule scales them to 128
        num_train=1,
        num_test_good=2,
        num_test_per_defect=1,
    )
    return AnomalyDataModule(source, 128, batch_size=2)


def _trainer(callbacks) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def test_transductive_method_scores_each_whole_category_once(tiny_backbone, datamodule, tmp_path):
    method = _Mutual(tiny_backbone)
    recorder, evaluator = _Recorder(), Evaluator()
    scoring = CategoryScoring([recorder, CategoryEvaluation(evaluator, tmp_path, num_overlays=1)])
    score_categories(_trainer([scoring]), method, datamodule, scoring, {})

    sizes = [len(datamodule.source.samples(category, "test")) for category in datamodule.categories]
    assert max(sizes) > datamodule.batch_size  # the set spans several batches
    assert method.categories_set_up == datamodule.categories
    # score_set saw each category whole, postprocess_set ran once per category on the full set
    assert method.model.set_sizes == sizes and method.model.postprocessed == sizes
    for result, category in zip(recorder.results, datamodule.categories, strict=True):
        assert result.category == category and len(result) == len(result.prediction)
        assert float(result.prediction.image_score.max()) == pytest.approx(1.0)
        # the same scores as scoring the category's images in one call
        images = torch.cat([batch.image for batch in datamodule.category_test_dataloader(category)])
        expected = method.postprocess_set(method.predict_images(images))
        torch.testing.assert_close(result.prediction.image_score, expected.image_score)
        assert result.paths == [sample.path for sample in datamodule.source.samples(category, "test")]
        # one image to draw (the consumers' largest wish), as uint8 HWC
        assert len(result.images) == 1
        assert next(iter(result.images.values())).shape == (128, 128, 3)
    assert set(evaluator.results) == set(datamodule.categories)
    assert len(list((tmp_path / "overlays").rglob("*.png"))) == len(datamodule.categories)


def test_drawing_order_takes_one_image_of_each_defect_type_in_turn_anomalous_first():
    kinds = ["good", "hole", "hole", "hole", "scratch", "scratch", "good", "stain"]
    labels = [0, 1, 1, 1, 1, 1, 0, 1]
    assert drawing_order(kinds, labels) == [1, 4, 7, 2, 5, 3, 0, 6]
    assert drawing_order(["x", "y"], [-1, -1]) == [0, 1]  # unlabelled: test order


class _Wants:
    def __init__(self, count: int) -> None:
        self.images_wanted = count
        self.results: list[CategoryResult] = []

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        self.results.append(result)


def test_the_images_to_draw_cover_the_defect_types_across_batches(tiny_backbone, tmp_path):
    # 64 px files (a quarter of the generation): the datamodule scales them to 128 like any other size.
    source = SyntheticAD(
        tmp_path / "data",
        categories=["disc"],
        image_size=64,
        num_train=1,
        num_test_good=2,
        num_test_per_defect=3,
    )
    datamodule = AnomalyDataModule(source, 128, batch_size=2)  # the defect folders span several batches
    wants, evaluator = _Wants(3), Evaluator()
    scoring = CategoryScoring([wants, CategoryEvaluation(evaluator, tmp_path / "run", num_overlays=3)])
    score_categories(_trainer([scoring]), _Mutual(tiny_backbone), datamodule, scoring, {})
    (result,) = wants.results
    drawn = [result.defect_types[index] for index in result.images]
    kinds = {sample.defect_type for sample in source.samples("disc", "test") if sample.label == 1}
    assert len(kinds) == 3 and sorted(drawn) == sorted(kinds)  # one of each, no normal image
    assert list(result.images) == drawing_order(result.defect_types, result.labels.tolist())[:3]
    written = sorted(
        path.name.split("_")[0] for path in (tmp_path / "run" / "overlays" / "disc").glob("*.png")
    )
    assert written == sorted(drawn)


def test_scoring_needs_a_declared_category(tiny_backbone, datamodule):
    method = _Mutual(tiny_backbone)
    scoring = CategoryScoring([_Recorder()])
    with pytest.raises(RuntimeError, match="begin"):
        _trainer([scoring]).test(
            method, dataloaders=datamodule.category_test_dataloader("disc"), verbose=False
        )
    with pytest.raises(ValueError, match="trainer's callbacks"):
        score_categories(_trainer([]), method, datamodule, scoring, {})
