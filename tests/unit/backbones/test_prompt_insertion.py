"""Prompt tokens inside the frozen encoders: visual prompts appended/replaced, deep text prompts."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP


def _reference_visual(backbone: FrozenCLIP, images: torch.Tensor, prompts: list[torch.Tensor], taps):
    """The insertion written out with plain concatenation of the full sequence (CLS, patches, prompts)."""
    x = backbone.ln_pre(backbone.embed_patches(images))
    patches = x.shape[1]
    outputs = {}
    for index, block in enumerate(backbone.blocks, start=1):
        if index <= len(prompts):
            x = torch.cat([x[:, :patches], prompts[index - 1]], dim=1)
        x = block(x)
        if index in taps:
            outputs[index] = x[:, :patches]
    return backbone.ln_post(x[:, 0]) @ backbone.proj, outputs


def test_visual_prompts_are_appended_then_replaced_and_never_returned(tiny_backbone: FrozenCLIP) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=generator)
    prompts = [torch.randn(2, 3, tiny_backbone.width, generator=generator) for _ in range(3)]
    prompts = [tokens.requires_grad_() for tokens in prompts]
    ours = tiny_backbone.encode_image_prompted(images, prompts, layers=[2, 8])
    pooled, taps = _reference_visual(tiny_backbone, images, prompts, {2, 8})
    torch.testing.assert_close(ours.global_embedding, pooled)
    for index in (2, 8):
        assert ours.layer_tokens[index].shape == (2, 65, tiny_backbone.width)
        torch.testing.assert_close(ours.layer_tokens[index], taps[index])
    plain = tiny_backbone.encode_image(images).global_embedding
    assert (ours.global_embedding - plain).abs().max() > 1e-3, "prompts must change the image embedding"
    ours.global_embedding.sum().backward()
    assert all(tokens.grad is not None and tokens.grad.abs().max() > 0 for tokens in prompts)


def test_shared_visual_prompts_broadcast_over_the_batch(tiny_backbone: FrozenCLIP) -> None:
    images = torch.rand(2, 3, 128, 128)
    shared = [torch.randn(2, tiny_backbone.width)]
    one = tiny_backbone.encode_image_prompted(images, shared).global_embedding
    each = tiny_backbone.encode_image_prompted(images, [shared[0].expand(2, -1, -1)]).global_embedding
    torch.testing.assert_close(one, each)
    with pytest.raises(ValueError, match="visual prompts must be"):
        tiny_backbone.encode_image_prompted(images, [torch.randn(2, 5), torch.randn(3, 5)])


def test_text_without_prompts_is_clip_encode_text(tiny_backbone: FrozenCLIP) -> None:
    ids = tiny_backbone.tokenize(["a photo of a damaged disc.", "a flawless nut."])
    reference = tiny_backbone.clip.encode_text(ids)
    torch.testing.assert_close(tiny_backbone.encode_text_deep_prompted(ids, {}), reference)


def test_deep_text_prompts_overwrite_positions_after_the_start_token(tiny_backbone: FrozenCLIP) -> None:
    ids = tiny_backbone.tokenize(["a bad photo of a damaged disc.", "a cropped photo of the nut."])
    tokens = {2: torch.randn(2, 3, tiny_backbone.text_width), 3: torch.randn(3, tiny_backbone.text_width)}
    clip = tiny_backbone.clip
    x = clip.token_embedding(ids) + clip.positional_embedding
    for index, block in enumerate(clip.transformer.resblocks, start=1):
        if index in tokens:
            x = x.clone()
            x[:, 1:4] = tokens[index]
        x = block(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)[torch.arange(2), ids.argmax(dim=-1)] @ clip.text_projection
    torch.testing.assert_close(tiny_backbone.encode_text_deep_prompted(ids, tokens), x)
    with pytest.raises(ValueError, match="blocks \\[9\\] outside 1..4"):
        tiny_backbone.encode_text_deep_prompted(ids, {9: tokens[3]})
    with pytest.raises(ValueError, match="overwrite the end token"):
        tiny_backbone.encode_text_deep_prompted(tiny_backbone.tokenize(["disc"]), {2: tokens[3]})
