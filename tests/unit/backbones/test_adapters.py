"""Hooks inside the frozen encoders (residual adapters) and single-path V-V attention."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.backbones.adapters import (
    ResidualAdapter,
    encode_image_adapted,
    encode_image_value_attention,
    encode_text_adapted,
    explicit_attention_block,
    value_attention_block,
)


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def test_without_hooks_the_encoders_are_clips_own(backbone: FrozenCLIP) -> None:
    images = torch.rand(2, 3, 128, 128)
    plain = backbone.encode_image(images, [2, 8])
    hooked = encode_image_adapted(backbone, images, {}, [2, 8])
    torch.testing.assert_close(hooked.global_embedding, plain.global_embedding)
    torch.testing.assert_close(hooked.layer_tokens[2], plain.layer_tokens[2])
    ids = backbone.tokenize(["a photo of a damaged disc.", "nut"])
    torch.testing.assert_close(
        encode_text_adapted(backbone, ids, {}), backbone.encode_text(["a photo of a damaged disc.", "nut"])
    )
    unprojected = encode_text_adapted(backbone, ids, {}, project=False)
    assert unprojected.shape == (2, backbone.text_width)


def test_a_hook_rewrites_the_stream_that_later_blocks_read(backbone: FrozenCLIP) -> None:
    images = torch.rand(1, 3, 128, 128)
    seen = {}

    def zero(x):
        seen["shape"] = tuple(x.shape)
        return torch.zeros_like(x)

    hooked = encode_image_adapted(backbone, images, {3: zero}, [3, 4])
    assert seen["shape"] == (1, 65, backbone.width)
    assert float(hooked.layer_tokens[3].abs().max()) == 0.0  # the tap comes after the hook
    block = backbone.blocks[3]
    torch.testing.assert_close(
        hooked.layer_tokens[4], backbone.run_block(block, torch.zeros(1, 65, backbone.width))
    )
    with pytest.raises(ValueError, match=r"vision hooks after blocks \[9\] outside 1..8"):
        encode_image_adapted(backbone, images, {9: zero})


def test_residual_adapter_mixes_a_rescaled_output_into_the_stream() -> None:
    torch.manual_seed(0)
    adapter = ResidualAdapter(16, weight=0.1)
    x = torch.randn(3, 5, 16)
    out = torch.nn.functional.leaky_relu(adapter.fc(x), 0.01)
    scaled = out / out.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(adapter(x), 0.1 * scaled + 0.9 * x)
    torch.testing.assert_close(adapter.adapted(x).norm(dim=-1), x.norm(dim=-1))


def test_value_attention_per_image_is_independent_of_the_batch(backbone: FrozenCLIP) -> None:
    images = torch.rand(3, 3, 128, 128)
    together = encode_image_value_attention(backbone, images, 2, [8])[8]
    alone = encode_image_value_attention(backbone, images[1:2], 2, [8])[8]
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-4)
    before = backbone.encode_image(images, [1]).layer_tokens[1]
    torch.testing.assert_close(encode_image_value_attention(backbone, images, 2, [1])[1], before)


def test_batch_mixing_value_attention_couples_the_images(backbone: FrozenCLIP) -> None:
    images = torch.rand(3, 3, 128, 128)
    together = encode_image_value_attention(backbone, images, 2, [8], mix_batch=True)[8]
    alone = encode_image_value_attention(backbone, images[:1], 2, [8], mix_batch=True)[8]
    assert float((together[:1] - alone).abs().max()) > 1e-2
    # One image: every attention weight is 1, the branch is out_proj(v).
    block = backbone.blocks[0]
    x = torch.randn(1, 65, backbone.width)
    attention = block.attn
    width = backbone.width
    values = torch.nn.functional.linear(
        block.ln_1(x), attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :]
    )
    mid = x + attention.out_proj(values)
    expected = mid + block.mlp(block.ln_2(mid))
    torch.testing.assert_close(
        value_attention_block(block, x, mix_batch=True), expected, atol=1e-5, rtol=1e-4
    )


def test_explicit_attention_is_a_sequence_first_attention_that_returns_its_weights(
    backbone: FrozenCLIP,
) -> None:
    block = backbone.blocks[2]
    x = torch.randn(2, 65, backbone.width, requires_grad=True)
    attention = torch.nn.MultiheadAttention(backbone.width, block.attn.num_heads)  # sequence-first
    attention.load_state_dict(block.attn.state_dict())
    tokens = x.transpose(0, 1).contiguous()
    normed = block.ln_1(tokens)
    mid = tokens + attention(normed, normed, normed)[0]  # need_weights=True, its default
    expected = (mid + block.mlp(block.ln_2(mid))).transpose(0, 1)
    assert torch.equal(explicit_attention_block(block, x), expected)
    images = torch.rand(2, 3, 128, 128)
    explicit = encode_image_adapted(backbone, images, {}, [2, 8], explicit_attention=True)
    fused = encode_image_adapted(backbone, images, {}, [2, 8])
    torch.testing.assert_close(explicit.layer_tokens[8], fused.layer_tokens[8], atol=1e-5, rtol=1e-5)
