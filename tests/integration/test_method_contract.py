"""The method contract, checked for every ``conf/method/*.yaml`` (a new method gets it for free).

Tiny backbone, synthetic data: the torch model declares its frozen features (cacheable, JSON-able
spec, batch axis first); training, if the method trains, goes through ``frozen_features``; testing
and prediction run the one evaluation path and agree; a checkpoint reloaded into a fresh method gives
identical outputs. A method's tiny-backbone settings come from ``experiment=<method>_synthetic`` when
it ships one.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from composed import compose_config, method_file
from hydra.utils import get_class

from anomaly_vlm.callbacks import CategoryResult, CategoryScoring
from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.methods.contract import FrozenFeatureExtractor
from anomaly_vlm.tasks.categories import score_categories
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.predict import HeatmapWriter

CONF = Path(__file__).resolve().parents[2] / "conf"
METHODS = sorted(path.stem for path in (CONF / "method").glob("*.yaml"))


def _compose(method: str):
    overrides = [f"method={method}", "backbone=tiny", "logger=none"]
    if (CONF / "experiment" / f"{method}_synthetic.yaml").is_file():
        overrides.append(f"experiment={method}_synthetic")
    return compose_config("train", overrides)


class _Keep:
    images_wanted = 0

    def __init__(self) -> None:
        self.results: list[CategoryResult] = []

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        self.results.append(result)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> AnomalyDataModule:
    root = tmp_path_factory.mktemp("contract")
    sizes = {"num_train": 1, "num_test_good": 2, "num_test_per_defect": 1}
    test = SyntheticAD(root, categories=["disc"], **sizes)
    train = SyntheticAD(root, categories=["grass"], **sizes)
    return AnomalyDataModule(test, 64, batch_size=3, train_source=train, train_batch_size=4)


def _trainer(tmp_path: Path, callbacks=(), max_steps: int = -1) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )


def _score(method, data, references, consumers, tmp_path) -> None:
    scoring = CategoryScoring(consumers)
    score_categories(_trainer(tmp_path, [scoring]), method, data, scoring, references)


def _method_class(name: str) -> type:
    # Read from the method's file without composing: parametrize lists are built at collection.
    # _check_contract holds it to the composed config's class.
    return get_class(method_file(name)["method"]["_target_"])


def _runs_on_dinov2(name: str) -> bool:
    from anomaly_vlm.backbones import FrozenDINOv2

    return _method_class(name).backbone_problem(FrozenDINOv2.capabilities) is None


@pytest.fixture(scope="module")
def backbone_64():
    """The tiny CLIP at 64 px: every method's contract holds at any size its patches divide, in a quarter
    of the pixels of 128 px."""
    from anomaly_vlm.backbones import FrozenCLIP

    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=64, seed=0)


@pytest.fixture(scope="module")
def data_126(tmp_path_factory) -> AnomalyDataModule:
    """The same data at 126 px, a multiple of DINOv2's 14 px patches."""
    root = tmp_path_factory.mktemp("contract-dinov2")
    sizes = {"num_train": 1, "num_test_good": 2, "num_test_per_defect": 1}
    test = SyntheticAD(root, categories=["disc"], **sizes)
    train = SyntheticAD(root, categories=["grass"], **sizes)
    return AnomalyDataModule(test, 126, batch_size=3, train_source=train, train_batch_size=4)


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, backbone_64, data, tmp_path):
    _check_contract(name, backbone_64, data, 64, tmp_path)


@pytest.mark.parametrize("name", [name for name in METHODS if _runs_on_dinov2(name)])
def test_method_contract_on_the_dinov2_family(name, data_126, tmp_path):
    """Every method whose declared needs the vision-only family meets keeps the contract on it too."""
    from anomaly_vlm.backbones import FrozenDINOv2

    backbone = FrozenDINOv2("anomaly-vlm-tiny-dinov2", None, image_size=126, seed=0)
    _check_contract(name, backbone, data_126, 126, tmp_path)


def _check_contract(name, tiny_backbone, data, size, tmp_path):
    cfg = _compose(name)
    assert get_class(cfg.method._target_) is _method_class(name)
    prompts = build(cfg.prompts)
    shots = 1 if getattr(get_class(cfg.method._target_), "supports_few_shot", True) else 0

    def fresh():
        return build(cfg.method, backbone=tiny_backbone, prompts=prompts, shots=shots, text_cache_dir=None)

    method = fresh()
    model = method.model
    assert isinstance(model, FrozenFeatureExtractor) and isinstance(model.cacheable, bool)
    json.dumps(model.feature_spec())
    images = torch.rand(2, 3, size, size)
    both, second = method.frozen_features(images), method.frozen_features(images[1:])
    for key, value in both.items():
        assert value.shape[0] == 2, key
        torch.testing.assert_close(value[1:], second[key], atol=1e-5, rtol=1e-4)

    if method.is_trainable:
        seen: list[int] = []
        extract = method.frozen_features
        method.frozen_features = lambda batch, *rest: (seen.append(len(batch)), extract(batch, *rest))[1]
        _trainer(tmp_path, max_steps=2).fit(method, datamodule=data)
        del method.frozen_features
        assert len(seen) >= 2, "training must take its image features from frozen_features"

    references = {category: data.reference_samples(category, shots, 0) for category in data.categories}
    tested, predicted, reloaded = _Keep(), HeatmapWriter(tmp_path, save_heatmaps=False), _Keep()
    _score(method, data, references, [tested], tmp_path)
    final = tested.results[0].prediction
    assert final.anomaly_map.shape == (len(final), size, size) and torch.isfinite(final.anomaly_map).all()

    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "method.ckpt")
    again = fresh()
    again.load_trainable_checkpoint(str(tmp_path / "method.ckpt"))
    # The prediction rows come from this second, separate pass: they must still equal the test scores.
    _score(again, data, references, [reloaded, predicted], tmp_path)
    assert [score for _, _, score in predicted.rows] == final.image_score.double().tolist()
    assert torch.equal(reloaded.results[0].prediction.image_score, final.image_score)
    assert torch.equal(reloaded.results[0].prediction.anomaly_map, final.anomaly_map)
