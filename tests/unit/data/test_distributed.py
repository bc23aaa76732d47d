"""Unpadded contiguous test shards for DDP."""

from __future__ import annotations

import pytest

from anomaly_vlm.data.distributed import ContiguousShardSampler, shard_bounds


@pytest.mark.parametrize("length", [0, 1, 5, 17, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_the_range_in_order(length: int, world: int) -> None:
    indices = []
    for rank in range(world):
        start, stop = shard_bounds(length, rank, world)
        indices += list(range(start, stop))
        assert stop - start in (length // world, length // world + 1)
    assert indices == list(range(length))  # disjoint, complete, no padding, rank order = original order


def test_sampler_without_process_group_yields_everything() -> None:
    sampler = ContiguousShardSampler(7)
    assert list(sampler) == list(range(7)) and len(sampler) == 7
