"""FAPrompt's Lightning wrapper: zero-shot only, checkpoints of learned parameters only, and it learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trained_methods import assert_loads_back, held_out_learning_run, saved_checkpoint

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.faprompt import FAPromptModule
from anomaly_vlm.prompts import LearnablePromptSet
from anomaly_vlm.prompts.faprompt import FAPromptSet

PROMPTS = FAPromptSet("faprompt", deep_prompt_depth=4)


def _module(backbone: FrozenCLIP, **kwargs) -> FAPromptModule:
    torch.manual_seed(111)
    return FAPromptModule(backbone, kwargs.pop("prompts", PROMPTS), **{"blur_sigma": 2.5, **kwargs})


def test_few_shot_and_other_prompt_sets_are_rejected(backbone: FrozenCLIP) -> None:
    with pytest.raises(ValueError, match=r"method 'faprompt' is zero-shot only; shots=1 is not supported"):
        _module(backbone, shots=1)
    with pytest.raises(ValueError, match="prompts=faprompt"):
        _module(backbone, prompts=LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4))


def test_checkpoint_holds_only_learned_parameters_and_refuses_other_shapes(
    backbone: FrozenCLIP, tmp_path: Path
) -> None:
    module = _module(backbone)
    width, embed, k = backbone.text_width, backbone.embed_dim, 10
    hidden = embed * k // 16
    expected = (
        5 * width  # shared normal context
        + 10 * 2 * width  # abnormality tokens of the 10 compound prompts
        + 3 * 4 * width  # deep prompts of text blocks 2..4
        + (k * embed * hidden + hidden)  # prior network, first layer
        + (hidden * width + width)  # prior network, second layer
    )
    assert module.parameter_counts()["trainable"] == expected
    path = tmp_path / "trained.ckpt"
    assert saved_checkpoint(module, path)["anomaly_vlm"]["method"] == "faprompt"
    assert_loads_back(module, _module(backbone), path)
    with pytest.raises(ValueError, match="prior_tokens: checkpoint has 10, this run has 4"):
        _module(backbone, prior_tokens=4).load_trainable_checkpoint(str(path))


def test_training_lowers_the_loss_and_raises_held_out_pixel_auroc(
    backbone: FrozenCLIP, held_out_sets: Path
) -> None:
    """Train on one generated set, evaluate on images of another generator seed (never seen)."""
    run = held_out_learning_run(
        lambda: _module(backbone), held_out_sets, epochs=6, seed=111, train_batch_size=8
    )
    print(run.summary())
    assert run.last_loss < 0.9 * run.first_loss  # measured: 6.259 -> 2.769 in 6 epochs
    assert run.trained_pixel > run.untrained_pixel + 0.1  # measured: 0.445 -> 0.741 (8 epochs: 0.658)
