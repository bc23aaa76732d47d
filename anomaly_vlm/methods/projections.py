"""Trained linear maps of tapped patch tokens into the text space (one per tap).

APRIL-GAN's alignment (Chen et al., arXiv 2305.17382): the raw residual stream at the output of each tapped
block (no ``ln_post``, no ``proj``) goes through its own ``Linear(width -> embed_dim)`` with bias. Shared so
that other compositions (the alignment analysis's ``alignment=linear``) use the very same module.
"""

from __future__ import annotations

from torch import nn


class TapProjections(nn.ModuleList):
    """One ``Linear(width -> embed_dim, bias=True)`` per tap, in tap order.

    A :class:`~torch.nn.ModuleList`, so a state dict names its maps ``<name>.<i>.weight`` / ``.bias`` as a
    plain list of linear layers does.

    Args:
        width: the vision transformer's width (the tokens' size).
        embed_dim: the joint embedding size (the text features' size).
        count: number of taps.
    """

    def __init__(self, width: int, embed_dim: int, count: int) -> None:
        super().__init__([nn.Linear(width, embed_dim, bias=True) for _ in range(count)])
