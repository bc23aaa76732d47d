"""Window embeddings: the CLS embedding of every ``k x k`` window of patches, aggregated back to patches.

WinCLIP's dense feature (Jeong et al., CVPR 2023), shared so that other compositions (the alignment
analysis's ``alignment=windows``) use the very same code: a window's embedding is the CLS token plus the
``k x k`` patch tokens of the window (positional embedding added, ``ln_pre`` applied per token before the
windows are gathered) run through all blocks, ``ln_post``, CLS pooling and ``proj``; per-patch scores are
the harmonic mean of the scores of the windows covering the patch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP


def window_indices(grid_size: tuple[int, int], kernel: int, stride: int = 1) -> Tensor:
    """Patch indices of every ``kernel x kernel`` window on a row-major grid.

    Returns ``[n_windows, kernel * kernel]`` (windows in row-major order of their top-left corner,
    patches row-major inside a window).
    """
    height, width = grid_size
    if kernel < 1 or stride < 1:
        raise ValueError(f"window scale {kernel} and stride {stride} must be positive")
    if kernel > height or kernel > width:
        raise ValueError(
            f"window scale {kernel} does not fit the {height}x{width} patch grid of the backbone"
        )
    grid = torch.arange(height * width).reshape(height, width)
    windows = grid.unfold(0, kernel, stride).unfold(1, kernel, stride)  # [nh, nw, k, k]
    return windows.reshape(-1, kernel * kernel)


def coverage_matrix(indices: Tensor, num_patches: int) -> Tensor:
    """``[n_windows, num_patches]`` 0/1 matrix: which patches each window covers."""
    cover = torch.zeros(indices.shape[0], num_patches)
    cover.scatter_(1, indices, 1.0)
    return cover


def harmonic_aggregation(window_scores: Tensor, coverage: Tensor) -> Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it.

    Args:
        window_scores: ``[B, n_windows]`` positive scores.
        coverage: ``[n_windows, N]`` 0/1 matrix from :func:`coverage_matrix`.

    Returns:
        ``[B, N]``; a patch covered by a window scoring exactly 0 gets 0 (the harmonic mean's limit,
        e.g. a few-shot query identical to a reference), and so does a patch no window covers
        (possible only with stride > 1).
    """
    counts = coverage.sum(dim=0)
    inverse = window_scores.reciprocal()
    # inf * 0 is NaN inside a matrix product, so zero scores are routed around it.
    infinite = torch.isinf(inverse)
    inverse_sum = torch.where(infinite, torch.zeros_like(inverse), inverse) @ coverage
    hit_zero = (infinite.to(coverage.dtype) @ coverage) > 0
    result = counts / inverse_sum
    return torch.where(hit_zero | (counts == 0), torch.zeros_like(result), result)


def encode_windows(
    backbone: FrozenCLIP,
    tokens: Tensor,
    window_index: Tensor,
    window_batch_size: int | None = None,
    cls_only_last_block: bool = False,
) -> Tensor:
    """Window embeddings ``[B, n_windows, D]`` from ``ln_pre``-ed tokens ``[B, 1 + N, W]``.

    Args:
        backbone: the frozen CLIP.
        tokens: embedded, ``ln_pre``-ed tokens (CLS first).
        window_index: ``[n_windows, k * k]`` patch indices from :func:`window_indices`.
        window_batch_size: at most this many windows per transformer call (None: all in one call).
        cls_only_last_block: finish only the CLS row in the last block (exact; the caller checks
            :func:`is_plain_block` of the last block).
    """
    batch, _, width = tokens.shape
    patch_index = window_index + 1  # +1: CLS sits at position 0
    cls_index = torch.zeros(patch_index.shape[0], 1, dtype=patch_index.dtype, device=patch_index.device)
    sequence_index = torch.cat([cls_index, patch_index], dim=1)  # [n_windows, 1 + k*k]
    n_windows, length = sequence_index.shape
    sequences = tokens[:, sequence_index.reshape(-1)].reshape(batch * n_windows, length, width)
    if window_batch_size is None:
        return window_pass(backbone, sequences, cls_only_last_block).reshape(batch, n_windows, -1)
    pooled = [
        window_pass(backbone, sequences[start : start + window_batch_size], cls_only_last_block)
        for start in range(0, sequences.shape[0], window_batch_size)
    ]
    return torch.cat(pooled).reshape(batch, n_windows, -1)


def window_pass(backbone: FrozenCLIP, sequences: Tensor, cls_only_last_block: bool = False) -> Tensor:
    """CLS-pooled projected embedding of each ``[S, L, W]`` token sequence (already ln_pre-ed)."""
    if not cls_only_last_block:
        final, _ = backbone.run_blocks(sequences, apply_ln_pre=False)
        return backbone.pool(final)
    hidden, _ = backbone.run_blocks(sequences, apply_ln_pre=False, last_block=backbone.num_layers - 1)
    cls = cls_row_of_block(backbone.blocks[-1], hidden)
    return backbone.project(backbone.ln_post(cls))


def is_plain_block(block: nn.Module) -> bool:
    """True for open_clip's standard pre-LN block (nn.MultiheadAttention, no cross-attention norm)."""
    needed = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
    return (
        all(hasattr(block, name) for name in needed)
        and isinstance(block.attn, nn.MultiheadAttention)
        and not hasattr(block, "ln_1_kv")
    )


def cls_row_of_block(block: nn.Module, hidden: Tensor) -> Tensor:
    """Output row 0 (CLS) of a standard pre-LN block applied to batch-first ``[S, L, W]`` tokens.

    Keys and values still come from every row; queries, the output projection and the MLP only run
    on the CLS row, which is all that CLS pooling reads.
    """
    normed = block.ln_1(hidden)
    query = normed[:, :1]
    if block.attn.batch_first:
        attended = block.attn(query, normed, normed, need_weights=False)[0]
    else:
        query_t, normed_t = query.transpose(0, 1), normed.transpose(0, 1)
        attended = block.attn(query_t, normed_t, normed_t, need_weights=False)[0].transpose(0, 1)
    cls = hidden[:, :1] + block.ls_1(attended)
    cls = cls + block.ls_2(block.mlp(block.ln_2(cls)))
    return cls[:, 0]
