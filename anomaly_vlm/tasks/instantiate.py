"""Hydra's ``instantiate`` with this project's errors: every object of a job is built through it."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_vlm.tasks.errors import MissingValueError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate`` that surfaces our own clear errors instead of Hydra's wrapped repr of them.

    Built objects are passed through a partial: Hydra would turn dataclass kwargs back into configs.
    A value left at ``???`` is reported by its full key before anything is built.
    """
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        # missing_keys already names them from the config root (``data.root``).
        raise MissingValueError(f"{', '.join(missing)} must be set (add {missing[0]}=... to the command)")
    try:
        factory = instantiate(node, _partial_=True)
    except InstantiationException as error:
        raise (error.__cause__ or error) from None
    try:
        return factory(**kwargs)
    except InstantiationException as error:
        raise (error.__cause__ or error) from None
