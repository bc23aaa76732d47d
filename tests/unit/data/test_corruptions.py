"""Test-time corruptions: seeded per image, identical wherever the dataset lies, masks moved with images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.corruptions import CORRUPTIONS, Corruption, corruption_from
from anomaly_vlm.data.dataset import AnomalyImageDataset


def _image(seed: int = 0, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=generator)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_changes_the_image_more_at_higher_strength(kind):
    image = _image()
    changes = []
    for strength in (1, 2, 3):
        corrupted, _ = Corruption(kind, strength)(image, None, "root/nut/test/crack/000.png", "nut")
        assert corrupted.shape == image.shape and corrupted.dtype == torch.float32
        assert float(corrupted.min()) >= 0.0 and float(corrupted.max()) <= 1.0
        changes.append(float((corrupted - image).abs().mean()))
    assert changes[0] > 0.004
    assert changes[0] < changes[2]


def test_the_draws_depend_on_seed_and_image_not_on_where_the_dataset_lies():
    image = _image()
    noise = Corruption("noise", 2, seed=0)
    first, _ = noise(image, None, "/a/nut/test/crack/000.png", "nut")
    moved, _ = noise(image, None, "/elsewhere/data/nut/test/crack/000.png", "nut")
    other_seed, _ = Corruption("noise", 2, seed=1)(image, None, "/a/nut/test/crack/000.png", "nut")
    other_image, _ = noise(image, None, "/a/nut/test/crack/001.png", "nut")
    assert torch.equal(first, moved)
    assert not torch.equal(first, other_seed)
    assert not torch.equal(first, other_image)


def test_rotation_moves_the_mask_with_the_image():
    image = torch.zeros(3, 33, 33)
    mask = torch.zeros(33, 33)
    image[:, 2:8, 14:19] = 1.0  # a bright defect at the top edge, centred
    mask[2:8, 14:19] = 1.0
    corrupted, moved = Corruption("rotation", 3)(image, mask, "r/nut/test/crack/000.png", "nut")
    assert moved is not None and not torch.equal(moved, mask)
    inside = corrupted.mean(0)[moved > 0]
    assert float(inside.mean()) > 0.8  # the mask still covers the (rotated) defect
    assert 0.5 * float(mask.sum()) < float(moved.sum()) < 1.5 * float(mask.sum())


def test_unknown_kind_or_strength_is_a_user_error_naming_the_key():
    with pytest.raises(DataError, match="datamodule.test_corruption=fog"):
        corruption_from("fog")
    with pytest.raises(DataError, match="datamodule.test_corruption_strength=4"):
        corruption_from("blur", 4)
    assert corruption_from(None) is None and corruption_from("none") is None


def test_corrupted_images_bypass_the_feature_cache(tmp_path):
    path = tmp_path / "nut" / "test" / "good" / "000.png"
    path.parent.mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(path)
    samples = [Sample(path=str(path), category="nut", label=0)]
    clean = AnomalyImageDataset(samples, 16)[0]
    blurred = AnomalyImageDataset(samples, 16, corruption=Corruption("blur", 2))[0]
    assert clean["digest"] is not None
    assert blurred["digest"] is None  # no file's pixels: a cached clean feature must not serve it
    assert not torch.equal(clean["image"], blurred["image"])
    assert torch.equal(blurred["mask"], clean["mask"])
