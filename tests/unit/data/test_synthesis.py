"""Synthesized defects: masks that are what changed, reproducible draws, clear errors on bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.data import AnomalyDataModule, DataError
from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.data.defect_synthesis import (
    AnomalySynthesizer,
    EpochSampler,
    SynthesizedAnomalies,
    perlin_noise,
    resolve_textures,
)
from anomaly_vlm.data.defect_synthesis.textures import skimage_photo

SIZE = 64
CHANGED = 0.5 / 255


def _photo(name: str, size: int = SIZE) -> np.ndarray:
    image = Image.fromarray(skimage_photo(name)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _normal_folder(root: Path, categories=("tiles", "fabric"), count: int = 4) -> Path:
    """Normal images only: <category>/train/good, no test/, no masks."""
    rng = np.random.default_rng(0)
    for category, name in zip(categories, ("brick", "gravel"), strict=False):
        folder = root / category / "train" / "good"
        folder.mkdir(parents=True)
        photo = skimage_photo(name)
        for i in range(count):
            top, left = rng.integers(0, 400, size=2)
            Image.fromarray(photo[top : top + 96, left : left + 96]).save(folder / f"{i}.png")
    return root


def _check_defect(original: np.ndarray, made) -> None:
    assert made.mask.dtype == bool and made.mask.shape == original.shape[:2]
    assert made.mask.any(), "a defect has a non-empty mask"
    changed = np.abs(made.image - original).max(axis=2) > CHANGED
    assert not changed[~made.mask].any(), "outside the mask nothing changes"
    assert changed[made.mask].mean() >= 0.5, "most of the mask changed"
    assert made.image.min() >= 0.0 and made.image.max() <= 1.0


def test_perlin_noise_is_smooth_bounded_and_seeded():
    noise = perlin_noise(50, 70, (3, 5), np.random.default_rng(1))
    assert noise.shape == (50, 70) and noise.dtype == np.float32
    assert np.abs(noise).max() <= 0.75 and noise.std() > 0.05
    # Smooth: neighbouring pixels differ far less than the field's range.
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2
    np.testing.assert_array_equal(noise, perlin_noise(50, 70, (3, 5), np.random.default_rng(1)))
    assert not np.array_equal(noise, perlin_noise(50, 70, (3, 5), np.random.default_rng(2)))
    with pytest.raises(ValueError, match="at least one cell"):
        perlin_noise(8, 8, (0, 1), np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["cutpaste", "texture"])
def test_each_kind_makes_a_visible_defect_whose_mask_is_what_changed(kind):
    synthesizer = AnomalySynthesizer(kinds=[kind], probability=1.0, seed=3)
    donor_image = _photo("grass")
    for index, name in enumerate(["gravel", "brick", "coffee"]):
        image = _photo(name)
        made = synthesizer(image, epoch=0, index=index, donor=lambda other_category: donor_image)
        assert made is not None and made.kind == kind
        _check_defect(image, made)


def test_same_seed_epoch_and_index_give_the_same_defect_and_others_differ():
    image = _photo("gravel")
    first = AnomalySynthesizer(probability=1.0, seed=7)(image, 2, 5)
    again = AnomalySynthesizer(probability=1.0, seed=7)(image, 2, 5)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.mask, again.mask)
    for other in (
        AnomalySynthesizer(probability=1.0, seed=8)(image, 2, 5),
        AnomalySynthesizer(probability=1.0, seed=7)(image, 3, 5),
        AnomalySynthesizer(probability=1.0, seed=7)(image, 2, 6),
    ):
        assert not np.array_equal(other.mask, first.mask) or not np.array_equal(other.image, first.image)


def test_probability_sets_the_share_of_synthesized_images_and_kinds_are_both_drawn():
    image = _photo("brick")
    synthesizer = AnomalySynthesizer(probability=0.3, seed=0)
    made = [synthesizer(image, 0, index) for index in range(60)]
    share = sum(item is not None for item in made) / len(made)
    assert 0.15 <= share <= 0.45
    assert {item.kind for item in made if item is not None} == {"cutpaste", "texture"}


def test_an_image_no_patch_of_itself_can_change_stays_normal():
    # Black: no colour jitter (brightness, contrast, saturation, hue) can change it.
    flat = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    assert AnomalySynthesizer(kinds=["cutpaste"], probability=1.0)(flat, 0, 0) is None
    # Another image's patch does change it.
    made = AnomalySynthesizer(kinds=["cutpaste"], probability=1.0, other_image=1.0)(
        flat, 0, 0, donor=lambda other_category: _photo("gravel")
    )
    _check_defect(flat, made)


def test_textures_from_files_folders_and_other_categories(tmp_path):
    folder = tmp_path / "dtd"
    folder.mkdir()
    Image.fromarray(skimage_photo("coffee")).save(folder / "coffee.jpg")
    Image.fromarray(skimage_photo("moon")).save(tmp_path / "moon.png")
    groups = resolve_textures([str(folder), str(tmp_path / "moon.png"), "brick", "other_categories"])
    assert groups == [
        [str(folder / "coffee.jpg")],
        [str(tmp_path / "moon.png")],
        ["skimage:brick"],
        ["other_categories"],
    ]
    assert len(resolve_textures(None)) >= 10

    red = np.zeros((SIZE, SIZE, 3), np.float32)
    red[..., 0] = 1.0
    synthesizer = AnomalySynthesizer(
        kinds=["texture"], probability=1.0, textures=["other_categories"], opacity=[1.0, 1.0]
    )
    image = _photo("gravel")
    asked = []

    def donor(other_category: bool) -> np.ndarray:
        asked.append(other_category)
        return red

    made = synthesizer(image, 0, 0, donor=donor)
    _check_defect(image, made)
    assert asked == [True]
    # No other category to borrow from: the texture kind cannot be made.
    assert synthesizer(image, 0, 0, donor=lambda other_category: None) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"kinds": ["cutpaste", "scratch"]},
            r"synthesis.kinds=\['cutpaste', 'scratch'\]: unknown kind 'scratch'; "
            "choose from cutpaste, texture",
        ),
        ({"kinds": []}, r"synthesis.kinds=\[\]: empty"),
        ({"probability": 0.0}, r"synthesis.probability=0.0 must be in \(0, 1\]"),
        ({"probability": 1.5}, r"synthesis.probability=1.5 must be in \(0, 1\]"),
        ({"patch_area": [0.2, 0.1]}, r"synthesis.patch_area=\[0.2, 0.1\] must satisfy"),
        ({"patch_area": 0.1}, r"synthesis.patch_area=0.1 must be two numbers"),
        ({"perlin_scale": [0.5, 3]}, r"synthesis.perlin_scale=\[0.5, 3.0\] must be two whole numbers"),
        ({"perlin_scale": [2, 2]}, r"synthesis.perlin_scale=\[2, 2\]: min must be < max"),
        ({"threshold": 0.8}, r"synthesis.threshold=0.8 must be in \[0, 0.7\)"),
        ({"opacity": [0.0, 0.0]}, r"synthesis.opacity=\[0.0, 0.0\]: max must be > 0"),
        ({"other_image": 2}, r"synthesis.other_image=2 must be in \[0, 1\]"),
        ({"seed": 1.5}, r"synthesis.seed=1.5 must be a whole number"),
        (
            {"textures": ["no_such_photo"]},
            r"synthesis.textures: 'no_such_photo' is not an image file, a folder",
        ),
        ({"textures": []}, r"synthesis.textures is empty"),
    ],
)
def test_bad_options_name_the_key(options, message):
    with pytest.raises(DataError, match=message):
        AnomalySynthesizer(**options)


def test_empty_texture_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"textures: folder .*empty holds no images"):
        AnomalySynthesizer(textures=[str(tmp_path / "empty")])


def test_dataset_items_are_labelled_masked_and_bypass_the_feature_cache(tmp_path):
    source = FolderDataset(_normal_folder(tmp_path))
    assert source.categories == ["fabric", "tiles"]  # train/good only: categories all the same
    samples = [s for c in source.categories for s in source.samples(c, "train")]
    base = AnomalyImageDataset(samples, SIZE)
    dataset = SynthesizedAnomalies(base, AnomalySynthesizer(probability=0.5, seed=0))
    synthesized = 0
    for index in range(len(dataset)):
        item = dataset[(1, index)]
        original = base[index]
        if item["label"] == 0:
            assert torch.equal(item["image"], original["image"]) and item["digest"] == original["digest"]
            assert not item["mask"].any()
            continue
        synthesized += 1
        assert item["digest"] is None and item["defect_type"].startswith("synthetic_")
        mask = item["mask"].bool()
        assert item["mask"].dtype == torch.float32 and mask.any()
        changed = (item["image"] - original["image"]).abs().amax(0) > CHANGED
        assert torch.equal(item["image"][:, ~mask], original["image"][:, ~mask])
        assert not changed[~mask].any() and changed[mask].float().mean() >= 0.5
        again = dataset[(1, index)]
        assert torch.equal(again["image"], item["image"]) and torch.equal(again["mask"], item["mask"])
    assert 0 < synthesized < len(dataset)


def test_epoch_sampler_carries_the_epoch_and_forwards_set_epoch():
    class Recording(list):
        epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    sampler = EpochSampler(Recording([2, 0, 1]))
    assert list(sampler) == [(0, 2), (0, 0), (0, 1)]
    assert [epoch for epoch, _ in sampler] == [1, 1, 1]  # a second pass is the next epoch
    sampler.set_epoch(7)
    assert list(sampler) == [(7, 2), (7, 0), (7, 1)] and sampler.sampler.epochs == [0, 1, 7]
    assert len(sampler) == 3


def test_normal_only_training_data_needs_synthesis_and_trains_with_it(tmp_path):
    source = FolderDataset(_normal_folder(tmp_path))
    plain = AnomalyDataModule(source, SIZE, train_source=source, train_split="train")
    with pytest.raises(
        DataError, match=r"holds only normal images \(8\).*add train_data.synthesize_anomalies=true"
    ):
        plain.train_dataloader()
    missing = AnomalyDataModule(source, SIZE, train_source=source)  # default split: test/, absent here
    with pytest.raises(
        DataError, match=r"category folder missing: .*test \(train_data, split datamodule.train_split=test\)"
    ):
        missing.check_training_data()

    def batches(seed: int) -> list:
        torch.manual_seed(0)  # the shuffle order
        datamodule = AnomalyDataModule(
            source,
            SIZE,
            train_source=source,
            train_split="train",
            train_batch_size=4,
            train_synthesis=AnomalySynthesizer(probability=0.5, seed=seed),
        )
        loader = datamodule.train_dataloader()
        return [batch for _ in range(2) for batch in loader]

    first, again, other = batches(0), batches(0), batches(1)
    labels = torch.cat([batch.label for batch in first])
    assert labels.sum() > 0 and (labels == 0).sum() > 0
    for batch in first:
        assert batch.mask is not None and batch.mask.shape == (len(batch), SIZE, SIZE)
        assert torch.equal(batch.mask.flatten(1).amax(1) > 0, batch.label == 1)
        assert all(
            (digest is None) == (label == 1) for digest, label in zip(batch.digest, batch.label, strict=True)
        )
    for one, two in zip(first, again, strict=True):
        assert torch.equal(one.image, two.image) and torch.equal(one.mask, two.mask)
    assert any(not torch.equal(one.image, two.image) for one, two in zip(first, other, strict=True))
    # The two epochs draw different defects.
    epoch_masks = [
        torch.cat([batch.mask for batch in first[:2]]),
        torch.cat([batch.mask for batch in first[2:]]),
    ]
    assert not torch.equal(*epoch_masks)


def test_mosaics_of_normal_images_get_defects_too(tmp_path):
    source = FolderDataset(_normal_folder(tmp_path))
    datamodule = AnomalyDataModule(
        source,
        SIZE,
        train_source=source,
        train_split="train",
        train_batch_size=8,
        train_mosaic_probability=1.0,
        train_synthesis=AnomalySynthesizer(probability=1.0, seed=0),
    )
    torch.manual_seed(0)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch.defect_type) <= {"synthetic_cutpaste", "synthetic_texture"}
    assert batch.label.tolist() == [1] * len(batch) and all(digest is None for digest in batch.digest)
    assert (batch.mask.flatten(1).amax(1) == 1).all()
