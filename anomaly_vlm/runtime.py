"""Facts about how this process was launched (Hydra run or multirun), for every layer to ask."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    """Whether this job is part of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
