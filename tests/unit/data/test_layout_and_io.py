from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.data import AnomalyBatch, AnomalyDataModule, DataError, MVTecLayout
from anomaly_vlm.data.datasets.mvtec import MVTEC_CATEGORIES, MVTecAD
from anomaly_vlm.data.image_io import load_image, load_mask
from anomaly_vlm.data.sampling import ShotsError, draw_references


def test_synthetic_source_lists_mvtec_layout(synthetic_source):
    assert synthetic_source.categories == ["brick", "grass", "gravel", "disc", "nut"]
    test = synthetic_source.samples("disc", "test")
    normal = [sample for sample in test if sample.label == 0]
    anomalous = [sample for sample in test if sample.label == 1]
    assert normal and anomalous
    assert all(sample.mask_path and sample.mask_path.endswith("_mask.png") for sample in anomalous)
    assert {sample.defect_type for sample in anomalous} == {"scratch", "stain", "hole"}
    train = synthetic_source.samples("disc", "train")
    assert all(sample.label == 0 and sample.defect_type == "good" for sample in train)
    assert synthetic_source.has_masks("disc")


def test_category_selection_is_validated(synthetic_source):
    from anomaly_vlm.data.datasets import SyntheticAD

    selected = SyntheticAD(synthetic_source.root.parent, categories=["nut", "brick"])
    assert selected.categories == ["nut", "brick"]
    with pytest.raises(DataError, match="Valid categories"):
        _ = SyntheticAD(synthetic_source.root.parent, categories=["bottle"]).categories


def test_mvtec_root_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _ = MVTecAD(tmp_path / "missing").categories
    (tmp_path / "bottle").mkdir()
    with pytest.raises(DataError, match="category folder missing"):
        _ = MVTecAD(tmp_path).categories
    assert len(MVTEC_CATEGORIES) == 15


def test_missing_mask_names_image_and_expected_path(tmp_path):
    defect = tmp_path / "widget" / "test" / "crack"
    defect.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(defect / "000.png")
    with pytest.raises(DataError, match=r"000\.png has no mask; expected .*ground_truth/crack/000_mask\.png"):
        MVTecLayout(tmp_path).samples("widget", "test")
    assert MVTecLayout(tmp_path, require_masks=False).samples("widget", "test")[0].mask_path is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.full((20, 30), 200, np.uint8), mode="L"),
        # opaque: transparent pixels are composited on black (test_transparent_pixels_become_black)
        lambda: Image.fromarray(
            np.dstack([np.full((20, 30, 3), 200, np.uint8), np.full((20, 30), 255, np.uint8)]), mode="RGBA"
        ),
        lambda: Image.fromarray(np.full((20, 30), 200 * 257, np.uint16)),
        lambda: Image.fromarray(np.full((20, 30), 200, np.uint8), mode="L").convert("P"),
    ],
    ids=["gray", "rgba", "16bit", "palette"],
)
def test_any_image_mode_becomes_rgb(tmp_path, make):
    path = tmp_path / "image.png"
    make().save(path)
    image = load_image(str(path), 16)
    assert image.shape == (3, 16, 16)
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, torch.full_like(image, 200 / 255), atol=2 / 255, rtol=0)


def test_mask_is_binarised_after_bilinear_resize(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 2  # label-valued masks (VisA) count as anomalous
    Image.fromarray(mask).save(tmp_path / "mask.png")
    resized, original = load_mask(str(tmp_path / "mask.png"), 20)
    assert original == (40, 40)
    assert set(resized.unique().tolist()) == {0.0, 1.0}
    assert resized.sum() == 100  # 10x10 block at half resolution


def test_truncated_image_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    Image.new("RGB", (64, 64), "red").save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="broken.png"):
        load_image(str(path), 16)


def test_a_category_with_one_normal_image_is_named_in_the_singular(synthetic_source):
    train = synthetic_source.samples("grass", "train")
    one = [sample for sample in train if sample.label == 0][:1]
    with pytest.raises(ShotsError, match="has only 1 normal training image$"):
        draw_references(one, 2, seed=0, category="grass")


def test_reference_draws_are_seeded_and_without_replacement(synthetic_source):
    train = synthetic_source.samples("grass", "train")
    first = draw_references(train, 4, seed=3, category="grass")
    again = draw_references(train, 4, seed=3, category="grass")
    other = draw_references(train, 4, seed=4, category="grass")
    assert [s.path for s in first] == [s.path for s in again]
    assert [s.path for s in first] != [s.path for s in other]
    assert len({s.path for s in first}) == 4
    assert draw_references(train, 0, seed=0, category="grass") == []
    with pytest.raises(ShotsError, match=f"only {len(train)} normal training images"):
        draw_references(train, len(train) + 1, seed=0, category="grass")
    with pytest.raises(ShotsError, match="negative"):
        draw_references(train, -1, seed=0, category="grass")


def test_sorted_slice_draws_are_anomalydinos_disjoint_name_sorted_slices(synthetic_source):
    train = synthetic_source.samples("grass", "train")
    by_name = sorted(Path(s.path).name for s in train if s.label == 0)
    draws = [
        draw_references(train, 2, seed=seed, category="grass", rule="sorted_slices") for seed in range(3)
    ]
    assert [[Path(s.path).name for s in draw] for draw in draws] == [by_name[0:2], by_name[2:4], by_name[4:6]]
    with pytest.raises(ShotsError, match="reference_seed=99 needs images 198..199"):
        draw_references(train, 2, seed=99, category="grass", rule="sorted_slices")
    with pytest.raises(ShotsError, match="reference_draw=sideways is not a draw"):
        draw_references(train, 2, seed=0, category="grass", rule="sideways")
    with pytest.raises(ShotsError, match="reference_draw=sideways"):
        AnomalyDataModule(synthetic_source, image_size=64, reference_draw="sideways")


def test_datamodule_serves_typed_batches_per_category(synthetic_source):
    datamodule = AnomalyDataModule(synthetic_source, image_size=64, batch_size=5)
    batch = next(iter(datamodule.category_test_dataloader("nut")))
    assert isinstance(batch, AnomalyBatch)
    assert batch.image.shape == (5, 3, 64, 64)
    assert batch.mask.shape == (5, 64, 64)
    assert set(batch.category) == {"nut"}
    assert batch.label.dtype == torch.long
    references = datamodule.reference_samples("nut", 2, seed=0)
    assert datamodule.load_images(references).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="train_data"):
        datamodule.train_samples()
