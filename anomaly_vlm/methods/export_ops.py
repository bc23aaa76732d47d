"""Export-friendly equivalents of ops that ONNX (or PyTorch's exporter) lacks.

A resize of a fixed input size to a fixed output size is linear and separable in torch's
implementation (one pass per axis), so it equals ``rows @ X @ columnsᵀ``: two matrix products with
constant matrices (:func:`resize_matrices`). That serves the antialiased bilinear resize
(``aten::_upsample_bilinear2d_aa``, which the exporter cannot write) and matches it to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_matrices(
    in_size: int, out_size: int, mode: str = "bilinear", align_corners: bool = False, antialias: bool = False
) -> tuple[Tensor, Tensor]:
    """``(rows, columns)``, each ``[out_size, in_size]`` float32: the square ``in -> out`` resize of
    ``F.interpolate`` as ``rows @ X @ columnsᵀ``.

    Each matrix is the resize, along its axis only, of an ``in x in`` identity image (computed in float64,
    rounded once). The probe has the real 2-D shape on purpose: torch resizes a one-pixel-wide image
    with other weights than a wide one, so a 1-D probe would not give the 2-D operator.
    """
    identity = torch.eye(in_size, dtype=torch.float64)[None, None]
    options = {"mode": mode, "align_corners": align_corners, "antialias": antialias}
    rows = F.interpolate(identity, size=(out_size, in_size), **options)[0, 0]
    columns = F.interpolate(identity, size=(in_size, out_size), **options)[0, 0].T
    return rows.contiguous().float(), columns.contiguous().float()


def resize_with_matrices(maps: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """Resize ``[B, H, W]`` maps with :func:`resize_matrices`: ``rows @ maps @ columnsᵀ``."""
    return rows.to(maps.dtype) @ maps @ columns.to(maps.dtype).T


__all__ = ["resize_matrices", "resize_with_matrices"]
