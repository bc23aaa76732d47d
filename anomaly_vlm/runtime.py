"""Facts about this process (Hydra run or multirun, its umask), for every layer to ask."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    """Whether this job is part of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file here: ``0o666`` less the process umask.

    For files written through a private temporary file (``tempfile.mkstemp`` gives ``0o600``) or by
    libraries that create them private, so they end up readable like every other file of their folder.
    """
    umask = os.umask(0o022)  # the umask can only be read by setting it: put it back at once
    os.umask(umask)
    return 0o666 & ~umask
