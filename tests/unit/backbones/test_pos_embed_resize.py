"""Positional-embedding resize: each backbone config carries the setting of the official code it serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anomaly_vlm.backbones.clip import interpolate_positional_embedding

CONF = Path(__file__).resolve().parents[3] / "conf" / "backbone"


def reference(pos: torch.Tensor, mode: str, antialias: bool) -> torch.Tensor:
    grid = pos[1:].reshape(1, 24, 24, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(37, 37), mode=mode, align_corners=False, antialias=antialias)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(37 * 37, -1)])


@pytest.mark.parametrize(("mode", "antialias"), [("bicubic", True), ("bicubic", False), ("bilinear", False)])
def test_resize_matches_torch(mode: str, antialias: bool) -> None:
    pos = torch.randn(1 + 24 * 24, 16, generator=torch.Generator().manual_seed(0))
    out = interpolate_positional_embedding(pos, (37, 37), mode=mode, antialias=antialias)
    assert torch.equal(out, reference(pos, mode, antialias))


def test_antialias_changes_an_upsampling() -> None:
    pos = torch.randn(1 + 24 * 24, 16, generator=torch.Generator().manual_seed(0))
    with_aa = interpolate_positional_embedding(pos, (37, 37), mode="bicubic", antialias=True)
    without = interpolate_positional_embedding(pos, (37, 37), mode="bicubic", antialias=False)
    assert (with_aa - without).abs().max() > 1e-3


def test_antialias_needs_a_filtering_mode() -> None:
    with pytest.raises(ValueError, match="antialias"):
        interpolate_positional_embedding(torch.zeros(1 + 16, 4), (5, 5), mode="nearest", antialias=True)


@pytest.mark.parametrize(
    ("config", "mode", "antialias"),
    [("vit_l14_336", "bicubic", True), ("vit_l14_336_quickgelu", "bilinear", False)],
)
def test_official_settings_are_the_defaults(config: str, mode: str, antialias: bool) -> None:
    node = OmegaConf.load(CONF / f"{config}.yaml")
    assert (node.pos_embed_interpolation, node.pos_embed_antialias) == (mode, antialias)
