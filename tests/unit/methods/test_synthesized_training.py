"""Training on normal images only: APRIL-GAN and AnomalyCLIP learn from synthesized defects.

Tiny random CLIP, synthetic data. The training set is the normal training images (``train/good``) and
nothing else; the defects are synthesized (CutPaste patches, Perlin texture blends). Then:

* the categories' own test images (never seen), with their real defects (scratches, stains, holes: kinds
  never synthesized), are segmented better than by the untrained model -- the "train on your own normal
  images" use; a fast APRIL-GAN check runs by default, AnomalyCLIP (20 epochs) is ``slow``;
* trained on three categories, the two held-out categories' defects are segmented better too (``slow``).
  With random CLIP weights this transfer is small and varies with the seed of the synthesis and of the
  training order (held-out pixel AUROC 0.536 -> 0.651, 0.411, 0.598, 0.635, 0.681 for seeds 0 to 4,
  mean 0.595), so the mean over five seeds is tested.

Fixed seeds make the runs deterministic; the margins were measured, then set well inside them.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from trained_methods import cpu_trainer

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data import AnomalyDataModule, DataError
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.data.defect_synthesis import AnomalySynthesizer
from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.metrics.functional import pixel_metrics
from anomaly_vlm.prompts import LearnablePromptSet, PromptSet

OWN = ["brick", "disc"]
TRAIN = ["grass", "gravel", "nut"]
TEST_SIZES = {"num_test_good": 3, "num_test_per_defect": 3}


def _datamodule(
    root, train: list[str], test: list[str], num_train: int, synthesis, seed: int = 0, size: int = 128
) -> AnomalyDataModule:
    sizes = {"num_train": num_train, **TEST_SIZES}
    return AnomalyDataModule(
        SyntheticAD(root, test, **sizes),
        image_size=size,
        batch_size=32,
        train_source=SyntheticAD(root, train, **sizes),
        train_split="train",  # train/good: normal images only
        train_batch_size=8,
        train_synthesis=synthesis,
        seed=seed,  # the training order
    )


def _pixel_auroc(module, datamodule: AnomalyDataModule) -> float:
    """Mean over the test categories of the pixel AUROC of their test images (real defects)."""
    values = []
    module.eval()
    for category in datamodule.categories:
        module.setup_category(category, None)
        maps, masks = [], []
        for batch in datamodule.category_test_dataloader(category):
            with torch.no_grad():
                maps.append(module.predict_images(batch.image).anomaly_map)
            masks.append(batch.mask)
        values.append(pixel_metrics(torch.cat(maps).numpy(), torch.cat(masks).numpy())["pixel_auroc"])
    return float(np.mean(values))


def _train(module, datamodule: AnomalyDataModule, epochs: int) -> tuple[float, float]:
    before = _pixel_auroc(module, datamodule)
    cpu_trainer(epochs).fit(module, datamodule=datamodule)
    return before, _pixel_auroc(module, datamodule)


def _aprillab(templates: int | None = None, size: int = 128) -> AprilGANModule:
    L.seed_everything(111, verbose=False)
    prompts = OmegaConf.to_container(OmegaConf.load("conf/prompts/aprilgan.yaml"))
    prompts.pop("_target_")
    if templates:
        prompts["templates"] = prompts["templates"][:templates]  # less text to encode
    backbone = FrozenCLIP("anomaly-vlm-tiny", None, image_size=size, seed=111)
    return AprilGANModule(backbone, PromptSet(**prompts))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """One folder for the generated sets of every test here: each size of set is generated once, then read."""
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a shared CPU, and bit-stable
    yield
    torch.set_num_threads(threads)


def test_training_data_is_normal_only_and_refused_without_synthesis(synthetic_root):
    datamodule = _datamodule(synthetic_root, OWN, OWN, 4, None)
    assert {sample.label for sample in datamodule.train_samples()} == {0}
    with pytest.raises(DataError, match="train_data.synthesize_anomalies=true"):
        datamodule.train_dataloader()


def test_aprillab_trained_on_normal_images_segments_their_real_defects_better(synthetic_root, one_thread):
    datamodule = _datamodule(synthetic_root, OWN, OWN, 4, AnomalySynthesizer(seed=0), size=96)
    before, after = _train(_aprillab(templates=4, size=96), datamodule, epochs=8)
    print(f"APRIL-GAN pixel AUROC on the test images of its own categories {before:.3f} -> {after:.3f}")
    # measured at 96 px (no assertion reads a size): 0.590 -> 0.667; other init seeds pass and fail as at
    # 128 px (0.759 -> 0.616 and 0.292 -> 0.631; 128 px: 0.618 -> 0.720, 0.645 -> 0.615, 0.374 -> 0.715);
    # lr 0: no change, the test fails
    assert after > before + 0.06


@pytest.mark.slow
def test_anomalyclip_trained_on_normal_images_segments_their_real_defects_better(synthetic_root, one_thread):
    L.seed_everything(111, verbose=False)
    torch.manual_seed(111)
    module = AnomalyCLIPModule(
        FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0),
        LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4),
        layers=[8],
        blur_sigma=1.0,  # sigma 1 at 128 px is about the official sigma 4 at 518 px
    )
    datamodule = _datamodule(synthetic_root, OWN, OWN, 6, AnomalySynthesizer(seed=0))
    before, after = _train(module, datamodule, epochs=20)
    print(f"AnomalyCLIP pixel AUROC on the test images of its own categories {before:.3f} -> {after:.3f}")
    assert after > before + 0.05


@pytest.mark.slow
def test_aprillab_trained_on_synthesized_defects_segments_held_out_categories_better(
    synthetic_root, one_thread
):
    results = []
    for seed in (0, 1, 2, 3, 4):
        datamodule = _datamodule(synthetic_root, TRAIN, OWN, 6, AnomalySynthesizer(seed=seed), seed=seed)
        results.append(_train(_aprillab(), datamodule, epochs=6))
    before = results[0][0]
    after = float(np.mean([trained for _, trained in results]))
    trained = [round(value, 3) for _, value in results]
    print(f"APRIL-GAN held-out pixel AUROC {before:.3f} -> {trained} (mean {after:.3f})")
    assert all(untrained == before for untrained, _ in results)
    assert after > before + 0.03
