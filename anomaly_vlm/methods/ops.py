"""Operations several methods share, so that no method imports another.

Each is written once, documented with the official code it reproduces, and tested in
``tests/unit/methods/test_ops.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP, value_value_attention


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


#: First DPAM block of the official AnomalyCLIP and FAPrompt code: ``DAPM_replace(DPAM_layer=20)`` gives the
#: last 19 of the 24 blocks of ViT-L/14 V-V attention, i.e. blocks 6..24 (1-based).
REFERENCE_DPAM_START = 6


def default_dpam_start(num_layers: int) -> int:
    """First DPAM block (1-based) for a backbone of ``num_layers`` blocks.

    The official code hard-codes blocks 6..24 of ViT-L/14 (the last 19 of 24). Other depths keep the same
    fraction of undisturbed early blocks: ``1 + round(5 * num_layers / 24)`` (6 for 24 blocks, 3 for 8).
    """
    return 1 + int(round((REFERENCE_DPAM_START - 1) * num_layers / REFERENCE_DEPTH))


@torch.no_grad()
def encode_dpam(
    backbone: FrozenCLIP,
    images: Tensor,
    layers: Sequence[int],
    dpam: bool = True,
    dpam_start: int = REFERENCE_DPAM_START,
    global_ln_post: bool = False,
    normalized: bool = False,
) -> tuple[Tensor, dict[int, Tensor]]:
    """The DPAM image encoder of AnomalyCLIP (and of FAPrompt, which builds on its code).

    As ``DAPM_replace`` + ``AnomalyCLIP_forward`` of the official code: the DPAM stream starts as the
    original stream's input to block ``s = dpam_start`` (``h_{s-1}``) and, for each block ``l >= s``, adds
    ``VV_l(ln_1(x_l))`` where ``x_l`` is the ORIGINAL stream's input to block ``l``; it has no MLP. The
    original stream runs the unmodified blocks. Nothing here is learned: the result is a frozen feature.

    Args:
        backbone: the frozen CLIP.
        images: ``[B, 3, H, W]`` in ``[0, 1]`` (or normalised with ``normalized=True``).
        layers: blocks (1-based) whose patch tokens are returned.
        dpam: False taps the plain stream instead.
        dpam_start: first DPAM block (1-based).
        global_ln_post: apply ``ln_post`` to the CLS token before the projection (the official codes
            do not: ``x_ori[0] @ proj``).
        normalized: the images are already normalised.

    Returns:
        ``(global_embedding [B, D], {block: patch embeddings [B, N, D]})``: the original stream's CLS after
        the last block ``@ proj``, and per tapped block the DPAM stream (the plain stream before DPAM
        starts or with ``dpam`` off) ``-> ln_post -> proj``, CLS dropped; none normalised; float32
        whatever ``backbone.precision``, as the backbone's own features (they meet float32 text and
        learned layers).
    """
    x = backbone.ln_pre(backbone.embed_patches(images, normalized=normalized))
    wanted = set(layers)
    taps: dict[int, Tensor] = {}
    stream: Tensor | None = None
    for index, block in enumerate(backbone.blocks, start=1):
        if dpam and index >= dpam_start:
            refined = value_value_attention(block, block.ln_1(x))
            stream = x + refined if stream is None else stream + refined
        x = backbone.run_block(block, x)
        if index in wanted:
            taps[index] = x if stream is None else stream
    if global_ln_post:
        global_embedding = backbone.ln_post(x[:, 0]) @ backbone.proj
    else:
        global_embedding = x[:, 0] @ backbone.proj
    patches = {
        index: (backbone.ln_post(tokens[:, 1:]) @ backbone.proj).float() for index, tokens in taps.items()
    }
    return global_embedding.float(), patches
