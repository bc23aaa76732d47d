"""AnomalyCLIP's deep prompt tokens pass through float16 where inserted (official ``.half()``), by default."""

from __future__ import annotations

import dataclasses

import torch

from anomaly_vlm.prompts.learnable import LearnablePromptEncoder, LearnablePromptSet


def encoder(backbone, fp16: bool) -> LearnablePromptEncoder:
    prompt_set = LearnablePromptSet(name="learned", deep_prompt_depth=4, deep_prompt_fp16=fp16)
    torch.manual_seed(0)
    return LearnablePromptEncoder(backbone, prompt_set)


def test_rounding_is_the_default_and_equals_pre_rounded_tokens(tiny_backbone) -> None:
    assert LearnablePromptSet(name="learned").deep_prompt_fp16
    rounded, plain = encoder(tiny_backbone, True), encoder(tiny_backbone, False)
    with torch.no_grad():
        plain.deep_prompts.copy_(rounded.deep_prompts.half().float())
    assert torch.equal(rounded(), plain())
    with torch.no_grad():
        plain.deep_prompts.copy_(rounded.deep_prompts)
    assert not torch.equal(rounded(), plain())


def test_gradients_reach_the_rounded_tokens(tiny_backbone) -> None:
    module = encoder(tiny_backbone, True)
    module()[1].sum().backward()
    assert module.deep_prompts.grad is not None and module.deep_prompts.grad.abs().sum() > 0
    assert module.deep_prompts.grad.dtype == torch.float32


def test_option_is_not_part_of_the_parameter_fingerprint() -> None:
    # The rounding changes no parameter shape: checkpoints load either way.
    base = LearnablePromptSet(name="learned")
    assert base.fingerprint() == dataclasses.replace(base, deep_prompt_fp16=False).fingerprint()
