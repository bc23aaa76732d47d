"""Frozen backbones kept between the jobs of one process.

Hydra's basic launcher runs the jobs of a sweep one after the other in one process (joblib's workers
are reused the same way). Each job would build its backbone again: open_clip's model construction, its
random initialisation or the weight file's load, and the positional-embedding resize. That costs 3 s for
ViT-B-16-plus-240 with random weights on two CPU cores, more for ViT-L with weights from disk, and it
is paid once per job of a 12-job sweep whose features all come from the feature cache.

The first job of a backbone config builds it once and keeps that copy untouched; every job gets its own
deep copy (0.9 s for ViT-B-16-plus-240), so nothing one job does to its backbone (device moves,
counters) reaches the next. Only the most recent config is kept: a sweep over backbones frees the
previous one before building the next.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from torch import nn

log = logging.getLogger(__name__)


class BackboneReuse:
    """Builds a backbone once per identity key and hands every caller a private deep copy."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._kept: nn.Module | None = None
        self.builds = 0  # counted so tests can prove a rebuild was avoided

    def get(self, key: str, build: Callable[[], nn.Module]) -> nn.Module:
        """A private copy of the backbone built by ``build`` for ``key`` (built only when ``key`` is new)."""
        if key != self._key:
            self.clear()  # free the previous backbone before the next one is built
            self._kept = build()
            self._key = key
            self.builds += 1
        else:
            log.info("backbone: reusing the one built by an earlier job of this process")
        return copy.deepcopy(self._kept)

    def clear(self) -> None:
        """Forget the kept backbone (frees its memory)."""
        self._key, self._kept = None, None


#: The process's reuse slot, used by the tasks layer for the jobs of a multirun.
JOB_BACKBONES = BackboneReuse()
