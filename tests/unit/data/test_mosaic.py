"""The 2x2 mosaic augmentation of training items."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.data.mosaic import MosaicDataset


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return SyntheticAD(
        tmp_path_factory.mktemp("synthetic"),
        ["disc", "nut"],
        image_size=64,
        num_train=1,
        num_test_good=2,
        num_test_per_defect=1,
    )


def _dataset(source) -> AnomalyImageDataset:
    samples = [s for c in source.categories for s in source.samples(c, "test")]
    return AnomalyImageDataset(samples, 64, with_masks=True)


def test_probability_one_makes_every_item_a_same_category_mosaic(source):
    base = _dataset(source)
    by_path = {sample.path: index for index, sample in enumerate(base.samples)}
    mosaic = MosaicDataset(base, probability=1.0)
    torch.manual_seed(0)
    for index in range(len(base)):
        item = mosaic[index]
        tiles = [base[by_path[path]] for path in item["path"].split("+")]
        assert len(tiles) == 4 and {tile["category"] for tile in tiles} == {item["category"]}
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"] == max(tile["label"] for tile in tiles)
        # Row-major layout: the top-right quadrant is the second tile, shrunk by two.
        expected = F.interpolate(tiles[1]["image"][None], size=32, mode="bicubic", antialias=True)[0]
        torch.testing.assert_close(item["image"][:, :32, 32:], expected.clamp(0, 1), atol=0.08, rtol=0)
        shrunk = F.interpolate(tiles[3]["mask"][None, None], size=32, mode="bilinear", antialias=True)[0, 0]
        assert torch.equal(item["mask"][32:, 32:], (shrunk > 0.5).float())
        if all(tile["mask"].sum() == 0 for tile in tiles):
            assert item["mask"].sum() == 0


def test_anomalous_tiles_are_four_anomalous_images_of_the_category(source):
    """Bayes-PFL's release: each tile an anomalous image of the class, so every mosaic is labelled 1."""
    base = _dataset(source)
    by_path = {sample.path: sample for sample in base.samples}
    anomalous = MosaicDataset(base, probability=1.0, tiles="anomalous")
    drawn = set()
    for index in range(len(base)):
        item = anomalous[index]
        tiles = [by_path[path] for path in item["path"].split("+")]
        assert all(tile.label == 1 and tile.category == item["category"] for tile in tiles)
        assert item["label"] == 1
        drawn.update(tile.path for tile in tiles)
    # Any tile rule draws good images too (the same seed and items).
    plain = MosaicDataset(base, probability=1.0)
    assert any(
        by_path[path].label == 0 for index in range(len(base)) for path in plain[index]["path"].split("+")
    )
    with pytest.raises(ValueError, match="mosaic tiles must be one of any, anomalous, got 'bad'"):
        MosaicDataset(base, probability=1.0, tiles="bad")


def test_probability_zero_is_the_plain_dataset_and_bad_values_fail(source):
    base = _dataset(source)
    plain = MosaicDataset(base, probability=0.0)
    assert torch.equal(plain[3]["image"], base[3]["image"]) and plain[3]["path"] == base[3]["path"]
    with pytest.raises(ValueError, match="probability"):
        MosaicDataset(base, probability=1.5)


def test_datamodule_option_wraps_the_training_set_only_when_enabled(source):
    off = AnomalyDataModule(source, 64, train_source=source, num_workers=0)
    on = AnomalyDataModule(source, 64, train_source=source, num_workers=0, train_mosaic_probability=0.2)
    assert isinstance(off.train_dataloader().dataset, AnomalyImageDataset)
    wrapped = on.train_dataloader().dataset
    assert isinstance(wrapped, MosaicDataset) and wrapped.probability == 0.2 and wrapped.tiles == "any"
    anomalous = AnomalyDataModule(
        source, 64, train_source=source, train_mosaic_probability=0.4, train_mosaic_tiles="anomalous"
    )
    assert anomalous.train_dataloader().dataset.tiles == "anomalous"


def test_batches_carry_file_digests_and_mosaics_have_none(source):
    import hashlib

    from anomaly_vlm.data.batch import collate_samples

    base = _dataset(source)
    plain = collate_samples([base[0], base[1]])
    for path, digest in zip(plain.path, plain.digest, strict=True):
        with open(path, "rb") as handle:
            assert digest == hashlib.sha256(handle.read()).hexdigest()
    torch.manual_seed(0)
    mixed = collate_samples([MosaicDataset(base, probability=1.0)[0], base[0]])
    assert mixed.digest == [None, plain.digest[0]]
