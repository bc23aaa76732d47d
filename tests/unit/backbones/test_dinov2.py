"""The DINOv2 backbone: the reference architecture and its positional-embedding resize, patch-token taps,
weights resolution and loading, and the capability declaration methods are checked against."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.backbones import FrozenCLIP, FrozenDINOv2, WeightsNotFoundError
from anomaly_vlm.backbones import dinov2 as dinov2_module
from anomaly_vlm.backbones.capabilities import BackboneNeeds, backbone_problem, unmet_needs
from anomaly_vlm.backbones.dinov2 import ARCHITECTURES, DinoViT, architecture, resolve_dinov2_weights

TINY = "anomaly-vlm-tiny-dinov2"

#: Parameter counts of the reference hub builders (facebookresearch/dinov2, built with pretrained=False).
REFERENCE_PARAMETERS = {
    "dinov2_vits14": 22_056_576,
    "dinov2_vitb14": 86_580_480,
    "dinov2_vitl14": 304_368_640,
    "dinov2_vitg14": 1_136_480_768,
    "dinov2_vits14_reg": 22_058_112,
}


@pytest.fixture(scope="module")
def tiny() -> FrozenDINOv2:
    return FrozenDINOv2(TINY, None, image_size=140, seed=0)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_architectures_have_the_reference_parameter_counts(name):
    with torch.device("meta"):
        vit = DinoViT(architecture(name))
    assert sum(value.numel() for value in vit.state_dict().values()) == REFERENCE_PARAMETERS[name]


def test_reference_state_dict_names():
    names = set(DinoViT(architecture(TINY)).state_dict())
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "norm.weight"} <= names
    assert {
        "blocks.0.attn.qkv.weight",
        "blocks.0.ls1.gamma",
        "blocks.3.mlp.fc2.bias",
        "blocks.3.ls2.gamma",
    } <= names
    with torch.device("meta"):
        giant = DinoViT(architecture("dinov2_vitg14"))
    assert giant.blocks[0].mlp.w12.weight.shape == (2 * 4096, 1536)  # SwiGLU hidden rounded as the reference


def test_positional_embedding_is_resized_with_the_reference_scale_factor(tiny):
    pos = tiny.vit.pos_embed.detach()[0]
    grid = pos[1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    scaled = F.interpolate(grid, scale_factor=((10 + 0.1) / 37, (10 + 0.1) / 37), mode="bicubic")
    expected = torch.cat([pos[:1], scaled.permute(0, 2, 3, 1).reshape(100, -1)])
    torch.testing.assert_close(tiny.positional_embedding, expected, rtol=0, atol=0)
    by_size = F.interpolate(grid, size=(10, 10), mode="bicubic").permute(0, 2, 3, 1).reshape(100, -1)
    assert (tiny.positional_embedding[1:] - by_size).abs().max() > 1e-3  # the offset is not a no-op


def test_register_variants_resize_by_size_with_antialias():
    arch = architecture("dinov2_vits14_reg")
    assert (arch.num_register_tokens, arch.interpolate_antialias, arch.interpolate_offset) == (4, True, 0.0)
    assert architecture("dinov2_vits14").interpolate_offset == 0.1


def test_patch_tokens_are_the_normed_last_block_without_cls_or_registers(tiny, monkeypatch):
    images = torch.rand(2, 3, 140, 140, generator=torch.Generator().manual_seed(0))
    last = tiny.patch_tokens(images)[4]
    assert last.shape == (2, 100, 64)
    raw = tiny.patch_tokens(images, [2, 4], norm=False)
    torch.testing.assert_close(tiny.vit.norm(raw[4]), last)
    x = tiny.vit.tokens(tiny.normalize(images))
    for block in tiny.vit.blocks[:2]:
        x = block(x)
    torch.testing.assert_close(raw[2], x[:, 1:])
    # Registers sit between CLS and the patches and are dropped too.
    registered = dataclasses.replace(architecture(TINY), num_register_tokens=4)
    monkeypatch.setitem(ARCHITECTURES, "tiny-registers", registered)
    with_registers = FrozenDINOv2("tiny-registers", None, image_size=140, seed=0)
    assert with_registers.vit.tokens(images).shape[1] == 1 + 4 + 100
    assert with_registers.patch_tokens(images)[4].shape == (2, 100, 64)


def test_non_square_inputs_give_a_non_square_grid_with_the_reference_resize(tiny):
    # The aspect-preserving geometry: a 150x100 file at shorter side 140 is 210x140 px, a 15x10 grid. The
    # reference resizes its 37x37 embedding with scale_factor ((h + 0.1) / 37, (w + 0.1) / 37), h first.
    pos = tiny.vit.pos_embed.detach()[0]
    grid = pos[1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    scaled = F.interpolate(grid, scale_factor=((10 + 0.1) / 37, (15 + 0.1) / 37), mode="bicubic")
    assert scaled.shape[-2:] == (10, 15)
    expected = torch.cat([pos[:1], scaled.permute(0, 2, 3, 1).reshape(150, -1)])
    torch.testing.assert_close(tiny.vit.interpolate_pos_encoding((10, 15))[0], expected, rtol=0, atol=0)
    images = torch.rand(2, 3, 140, 210, generator=torch.Generator().manual_seed(1))
    assert tiny.input_grid(images) == (10, 15)
    assert tiny.input_grid(images.transpose(-1, -2)) == (15, 10)
    tokens = tiny.patch_tokens(images)[4]
    assert tokens.shape == (2, 150, 64)
    x = tiny.vit.patch_embed(tiny.normalize(images))
    x = torch.cat([tiny.vit.cls_token.expand(2, -1, -1), x], dim=1) + expected.unsqueeze(0)
    for block in tiny.vit.blocks:
        x = block(x)
    torch.testing.assert_close(tokens, tiny.vit.norm(x)[:, 1:], rtol=0, atol=0)
    # Square inputs are unchanged (the grid the backbone states).
    assert tiny.input_grid(torch.rand(1, 3, 140, 140)) == tiny.grid_size == (10, 10)


def test_image_size_errors(tiny):
    for size in [(140, 145), (126, 210), (112, 112)]:  # a side off the patch size; shorter side not 140
        with pytest.raises(ValueError, match="expected 140x140 inputs"):
            tiny.patch_tokens(torch.rand(1, 3, *size))
    with pytest.raises(ValueError, match="not a multiple of patch size 14"):
        FrozenDINOv2(TINY, None, image_size=128)
    with pytest.raises(ValueError, match="expected 140x140 inputs"):
        tiny.patch_tokens(torch.rand(1, 3, 112, 112))
    with pytest.raises(ValueError, match=r"layers \[5\] outside 1..4"):
        tiny.patch_tokens(torch.rand(1, 3, 140, 140), [5])
    with pytest.raises(ValueError, match="is not a DINOv2 model"):
        FrozenDINOv2("ViT-B-16", None)
    # The configs state the patch size (datamodule.crop_multiple follows it); a wrong one is refused.
    assert FrozenDINOv2(TINY, None, image_size=140, patch_size=14).patch_size == 14
    with pytest.raises(ValueError, match="backbone.patch_size=16, but .* has patches of 14"):
        FrozenDINOv2(TINY, None, image_size=140, patch_size=16)


def test_weights_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert resolve_dinov2_weights("dinov2_vits14", None) is None
    with pytest.raises(WeightsNotFoundError, match="file does not exist"):
        resolve_dinov2_weights("dinov2_vits14", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="neither a file nor a DINOv2 weight tag"):
        resolve_dinov2_weights("dinov2_vits14", "laion2b")
    with pytest.raises(WeightsNotFoundError, match="no cached copy and no network") as caught:
        resolve_dinov2_weights("dinov2_vits14", "lvd142m", tmp_path / "cache")
    assert "dinov2_vits14_pretrain.pth" in str(caught.value)
    cached = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_reg_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_dinov2_weights("dinov2_vits14_reg", "lvd142m") == cached
    assert dinov2_module.weight_url("dinov2_vits14_reg").endswith(
        "/dinov2_vits14/dinov2_vits14_reg_pretrain.pth"
    )


def test_weight_file_loads_strictly_with_its_identity(tiny, tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.vit.state_dict(), path)
    loaded = FrozenDINOv2(TINY, str(path), image_size=140, seed=123)
    images = torch.rand(1, 3, 140, 140)
    torch.testing.assert_close(loaded.patch_tokens(images)[4], tiny.patch_tokens(images)[4], rtol=0, atol=0)
    assert loaded.identity.startswith(f"{TINY}:file:") and tiny.identity == f"{TINY}:random:seed0"
    state = tiny.vit.state_dict()
    state.pop("mask_token")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="mask_token"):
        FrozenDINOv2(TINY, str(path), image_size=140)


def test_capabilities_and_needs():
    assert not FrozenDINOv2.capabilities.text_tower and FrozenDINOv2.capabilities.patch_tokens
    assert FrozenCLIP.capabilities.text_tower and FrozenCLIP.capabilities.clip_tokens
    text_method = BackboneNeeds(text_tower=True, clip_tokens=True)
    assert unmet_needs(text_method, FrozenDINOv2.capabilities) == ["text_tower", "clip_tokens"]
    assert unmet_needs(text_method, FrozenCLIP.capabilities) == []
    patches_only = BackboneNeeds(text_tower=False, patch_tokens=True, clip_tokens=False)
    assert backbone_problem("anomalydino", patches_only, FrozenDINOv2.capabilities) is None
    message = backbone_problem("winclip", text_method, FrozenDINOv2.capabilities, "dinov2_vits14")
    assert (
        message.startswith("method=winclip needs a text tower")
        and "backbone=dinov2_vits14 (DINOv2)" in message
    )
    assert "\n" not in message


def test_clip_patch_tokens_are_its_ln_post_patch_tokens(tiny_backbone):
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    features = tiny_backbone.encode_image(images, layers=[3])
    tokens = tiny_backbone.patch_tokens(images, [3, tiny_backbone.num_layers])
    torch.testing.assert_close(tokens[tiny_backbone.num_layers], features.patch_tokens)
    torch.testing.assert_close(tokens[3], tiny_backbone.ln_post(features.layer_tokens[3])[:, 1:])


@pytest.mark.slow
def test_vits14_at_448_with_random_weights():
    backbone = FrozenDINOv2("dinov2_vits14", None, image_size=448, seed=0)
    assert backbone.grid_size == (32, 32) and backbone.width == 384 and backbone.num_layers == 12
    tokens = backbone.patch_tokens(torch.rand(1, 3, 448, 448))[12]
    assert tokens.shape == (1, 1024, 384) and torch.isfinite(tokens).all()
