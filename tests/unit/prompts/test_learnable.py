"""Learnable object-agnostic prompts and the deep-prompt text encoder path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.prompts import LearnablePromptEncoder, LearnablePromptSet


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _capture_block_inputs(backbone: FrozenCLIP) -> tuple[dict[int, torch.Tensor], list]:
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(backbone.clip.transformer.resblocks, start=1):

        def hook(module, args, kwargs, index=index):
            inputs[index] = args[0].detach().clone()

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    return inputs, handles


def test_sentences_and_parameter_shapes(backbone: FrozenCLIP) -> None:
    prompt_set = LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4)
    normal, anomalous = prompt_set.sentences("bottle")
    assert normal == [" ".join(["X"] * 12) + " object."]
    assert anomalous == [" ".join(["X"] * 12) + " damaged object."]
    torch.manual_seed(0)
    encoder = LearnablePromptEncoder(backbone, prompt_set)
    width = backbone.clip.ln_final.weight.shape[0]
    shapes = {name: tuple(parameter.shape) for name, parameter in encoder.named_parameters()}
    assert shapes == {
        "context_normal": (12, width),
        "context_anomalous": (12, width),
        "deep_prompts": (3, 4, width),  # blocks 2..4
    }
    everything = torch.cat([parameter.detach().flatten() for parameter in encoder.parameters()])
    assert abs(float(everything.std()) - 0.02) < 0.002
    assert all(parameter.requires_grad for parameter in encoder.parameters())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())


def test_placeholder_context_without_deep_prompts_equals_clip_text_encoder(backbone: FrozenCLIP) -> None:
    """With the context set to the 'X' token embedding and no deep prompts, our loop is CLIP's encode_text."""
    prompt_set = LearnablePromptSet("plain", deep_prompt_depth=1)
    encoder = LearnablePromptEncoder(backbone, prompt_set)
    x_embedding = backbone.clip.token_embedding(backbone.tokenize(["X"]))[0, 1]
    with torch.no_grad():
        encoder.context_normal.copy_(x_embedding.expand(12, -1))
        encoder.context_anomalous.copy_(x_embedding.expand(12, -1))
    normal, anomalous = prompt_set.sentences()
    expected = F.normalize(backbone.encode_text(normal + anomalous), dim=-1)
    torch.testing.assert_close(encoder(), expected, rtol=1e-5, atol=1e-5)


def test_deep_prompts_overwrite_positions_1_to_4_in_blocks_2_to_depth(backbone: FrozenCLIP) -> None:
    prompt_set = LearnablePromptSet("deep", deep_prompt_depth=3)
    torch.manual_seed(1)
    encoder = LearnablePromptEncoder(backbone, prompt_set)
    inputs, handles = _capture_block_inputs(backbone)
    outputs: dict[int, torch.Tensor] = {}
    handles.append(
        backbone.clip.transformer.resblocks[0].register_forward_hook(
            lambda module, args, output: outputs.setdefault(1, output.detach().clone())
        )
    )
    try:
        with torch.no_grad():
            encoder()
    finally:
        for handle in handles:
            handle.remove()
    positional = backbone.clip.positional_embedding
    # Block 1 sees the context vectors (plus positions) in slots 1..12 of each sentence.
    torch.testing.assert_close(inputs[1][0, 1:13], encoder.context_normal + positional[1:13])
    torch.testing.assert_close(inputs[1][1, 1:13], encoder.context_anomalous + positional[1:13])
    # Blocks 2 and 3 get the deep tokens, without positional embedding, shared by both sentences,
    # rounded through fp16 as the official encoder inserts them (deep_prompt_fp16, default on).
    for block, deep in ((2, encoder.deep_prompts[0]), (3, encoder.deep_prompts[1])):
        for sentence in range(2):
            torch.testing.assert_close(inputs[block][sentence, 1:5], deep.half().float(), rtol=0, atol=0)
    # Block 4 (beyond depth 3) sees block 3's output, not deep tokens.
    assert not torch.allclose(inputs[4][0, 1:5], encoder.deep_prompts[1])
    # Token 0 (SOT) and the positions past 4 pass from block 1 to block 2 untouched.
    torch.testing.assert_close(inputs[2][:, :1], outputs[1][:, :1])
    torch.testing.assert_close(inputs[2][:, 5:], outputs[1][:, 5:])


def test_gradients_reach_every_prompt_parameter(backbone: FrozenCLIP) -> None:
    encoder = LearnablePromptEncoder(backbone, LearnablePromptSet("grad", deep_prompt_depth=4))
    features = encoder()
    (features[1] - features[0]).pow(2).sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, name


def test_depth_beyond_text_encoder_is_rejected_with_the_key(backbone: FrozenCLIP) -> None:
    with pytest.raises(ValueError, match=r"prompts.deep_prompt_depth=9 exceeds the 4 text blocks"):
        LearnablePromptEncoder(backbone, LearnablePromptSet("too_deep", deep_prompt_depth=9))


def test_invalid_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="deep_prompt_length"):
        LearnablePromptSet("bad", context_length=2, deep_prompt_length=4)
    with pytest.raises(ValueError, match="context_length"):
        LearnablePromptSet("bad", context_length=-1)
    assert LearnablePromptSet("a").fingerprint() != LearnablePromptSet("a", context_length=8).fingerprint()
