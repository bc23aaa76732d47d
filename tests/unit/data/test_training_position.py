"""The training data of an epoch is a function of (seed, epoch): order, mosaics and synthesized defects
never come from the global generators, and the epoch is all a resumed training restores."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.data.defect_synthesis import AnomalySynthesizer
from anomaly_vlm.data.sampling import ShuffledOrder

SIZE = 64


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return SyntheticAD(
        tmp_path_factory.mktemp("synthetic"),
        ["disc", "nut"],
        image_size=SIZE,
        num_train=4,
        num_test_good=2,
        num_test_per_defect=1,
    )


def _datamodule(source, **options) -> AnomalyDataModule:
    options = {"train_mosaic_probability": 0.5, "train_synthesis": AnomalySynthesizer(seed=3), **options}
    return AnomalyDataModule(
        source, SIZE, train_source=source, train_split="train", train_batch_size=3, num_workers=0, **options
    )


def _epoch(loader) -> list[tuple]:
    return [(batch.path, batch.image, batch.mask) for batch in loader]


def _same(one: list[tuple], two: list[tuple]) -> bool:
    return len(one) == len(two) and all(
        a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
        for a, b in zip(one, two, strict=True)
    )


def test_shuffled_order_depends_on_seed_and_epoch_only():
    order = ShuffledOrder(20, seed=4)
    torch.manual_seed(0)
    first, second = list(order), list(order)  # iterated without set_epoch: the next epoch each pass
    torch.manual_seed(1)
    order.set_epoch(0)
    assert list(order) == first and sorted(first) == list(range(20))
    assert second != first and list(ShuffledOrder(20, seed=5)) != first


def test_an_epoch_is_the_same_whatever_the_global_generators_hold(source):
    torch.manual_seed(0)
    one = _epoch(_datamodule(source).train_dataloader())
    torch.manual_seed(1)
    two = _epoch(_datamodule(source).train_dataloader())
    assert _same(one, two)
    assert any("+" in path for batch in one for path in batch[0])  # mosaics were drawn
    assert not _same(one, _epoch(_datamodule(source, seed=1).train_dataloader()))


def test_a_restored_datamodule_continues_at_the_next_epoch_even_before_set_epoch(source):
    """A loader with workers asks for its first indices when created, before Lightning's set_epoch."""
    straight = _datamodule(source)
    loader = straight.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        _epoch(loader)
    state = straight.state_dict()
    assert state == {"train_epoch": 2}
    third = _epoch(loader)  # epoch 2, as Lightning would run it next

    resumed = _datamodule(source)
    resumed.load_state_dict(state)
    assert _same(_epoch(resumed.train_dataloader()), third)
