"""Sharding for multi-process (DDP) jobs without padding or duplicated samples.

Lightning's ``DistributedSampler`` pads every rank to the same length by repeating samples, which
changes test metrics. Test sets are instead split into contiguous, disjoint shards; rank 0 gathers the
shards in rank order, which restores the single-process order exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Sampler


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(length: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous share; shares differ by at most one sample."""
    base, extra = divmod(length, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ContiguousShardSampler(Sampler[int]):
    """This rank's contiguous shard of ``range(length)``, in order, never padded.

    The rank is read when the loader is iterated, not when it is built, because per-category test
    loaders are made before Lightning initialises the process group.
    """

    def __init__(self, length: int) -> None:
        self.length = int(length)

    def _bounds(self) -> tuple[int, int]:
        return shard_bounds(self.length, *rank_and_world())

    def __iter__(self) -> Iterator[int]:
        start, stop = self._bounds()
        return iter(range(start, stop))

    def __len__(self) -> int:
        start, stop = self._bounds()
        return stop - start
