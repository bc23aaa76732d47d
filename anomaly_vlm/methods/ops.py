"""Operations several methods share, so that no method imports another.

Each is written once, documented with the official code it reproduces, and tested in
``tests/unit/methods/test_ops.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps, equal to ``scipy.ndimage.gaussian_filter``.

    Same kernel as SciPy (radius ``int(truncate * sigma + 0.5)``, normalised samples of the Gaussian)
    and the same border mode (``reflect``: ``d c b a | a b c d | d c b a``), which is what the official
    test script applies per image with ``sigma=4``.
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    x = maps.unsqueeze(1)
    for dim in (-1, -2):
        size = x.shape[dim]
        if radius >= size:
            # SciPy reflects repeatedly; index the symmetric extension for arbitrarily wide kernels.
            index = torch.arange(-radius, size + radius, device=maps.device)
            period = 2 * size
            index = torch.remainder(index, period)
            index = torch.where(index >= size, period - 1 - index, index)
            x = x.index_select(dim, index)
        else:
            left = x.narrow(dim, 0, radius).flip(dim)
            right = x.narrow(dim, size - radius, radius).flip(dim)
            x = torch.cat([left, x, right], dim=dim)
        shape = (1, 1, 1, -1) if dim == -1 else (1, 1, -1, 1)
        x = F.conv2d(x, kernel.view(shape))
    return x[:, 0]


#: Four evenly spaced taps: blocks 6, 12, 18, 24 of a 24-block ViT-L-14-336 (APRIL-GAN's stages, MuSc's
#: layers, AdaCLIP's taps).
REFERENCE_STAGES: tuple[int, ...] = (6, 12, 18, 24)
REFERENCE_DEPTH = 24


def default_stages(num_layers: int) -> tuple[int, ...]:
    """The published stages scaled to a backbone of ``num_layers`` blocks (1-based).

    24 blocks -> 6/12/18/24, 12 -> 3/6/9/12, 8 -> 2/4/6/8.
    """
    stages = tuple(max(1, round(stage * num_layers / REFERENCE_DEPTH)) for stage in REFERENCE_STAGES)
    if len(set(stages)) != len(stages):
        raise ValueError(
            f"a backbone with {num_layers} blocks is too shallow for {len(REFERENCE_STAGES)} distinct "
            "stages; set method.stages explicitly"
        )
    return stages


def resolve_stages(
    stages: Sequence[int] | None, backbone: FrozenCLIP, key: str = "method.stages"
) -> tuple[int, ...]:
    """Validate explicit stages or derive the default ones from the backbone depth."""
    if stages is None:
        return default_stages(backbone.num_layers)
    resolved = tuple(int(stage) for stage in stages)
    if not resolved:
        raise ValueError(f"{key} is empty; give at least one block index (1-based)")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{key}={list(resolved)} repeats a block")
    bad = [stage for stage in resolved if not 1 <= stage <= backbone.num_layers]
    if bad:
        raise ValueError(
            f"{key}={list(resolved)}: blocks {bad} outside 1..{backbone.num_layers} of backbone "
            f"'{backbone.model_name}'"
        )
    return resolved
