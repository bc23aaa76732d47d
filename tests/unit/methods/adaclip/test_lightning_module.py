"""AdaCLIP's Lightning wrapper: zero-shot only, checkpoints of learned parameters only, and it learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from trained_methods import assert_loads_back, held_out_learning_run, saved_checkpoint

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.adaclip import AdaCLIPModule
from anomaly_vlm.prompts import LearnablePromptSet, PromptSet

CONF = Path(__file__).resolve().parents[4] / "conf"
SMALL = PromptSet("adaclip_small", ["flawless {}"], ["damaged {}"], ["a bad photo of a {}."])


def _prompts() -> PromptSet:
    values = OmegaConf.to_container(OmegaConf.load(CONF / "prompts" / "adaclip.yaml"))
    values.pop("_target_")
    return PromptSet(**values)


#: No assertion here reads a size: 96 px runs the tiny CLIP on about half of 128's patches.
SIZE = 96


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=SIZE, seed=0)


def _module(backbone: FrozenCLIP, **kwargs) -> AdaCLIPModule:
    torch.manual_seed(111)
    return AdaCLIPModule(backbone, kwargs.pop("prompts", _prompts()), **kwargs)


def test_few_shot_and_learnable_prompt_sets_are_rejected(backbone: FrozenCLIP) -> None:
    with pytest.raises(ValueError, match=r"method 'adaclip' is zero-shot only; shots=1 is not supported"):
        _module(backbone, shots=1)
    with pytest.raises(ValueError, match="prompts=adaclip"):
        _module(backbone, prompts=LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4))


def test_checkpoint_holds_only_learned_parameters_and_refuses_other_shapes(
    backbone: FrozenCLIP, tmp_path
) -> None:
    module = _module(backbone)
    width, embed, n, depth = backbone.width, backbone.embed_dim, 5, 4
    expected = (
        depth * n * width  # visual static prompts
        + depth * n * backbone.text_width  # text static prompts
        + n * (embed * width + width)  # visual generator
        + n * (embed * backbone.text_width + backbone.text_width)  # text generator
        + 4 * (width * embed + embed)  # patch projections of the four taps
        + embed * embed
        + embed  # CLS projection
    )
    assert module.parameter_counts()["trainable"] == expected
    path = tmp_path / "trained.ckpt"
    meta = saved_checkpoint(module, path)["anomaly_vlm"]
    assert meta["method"] == "adaclip" and meta["layers"] == [2, 4, 6, 8] and meta["prompt_length"] == 5
    assert_loads_back(module, _module(backbone), path)
    with pytest.raises(ValueError, match="prompt_length: checkpoint has 5, this run has 3"):
        _module(backbone, prompt_length=3).load_trainable_checkpoint(str(path))


def test_training_lowers_the_loss_and_raises_held_out_pixel_auroc(
    backbone: FrozenCLIP, held_out_sets: Path
) -> None:
    """Train on one generated set, evaluate on images of another generator seed (never seen)."""
    run = held_out_learning_run(
        # sigma 0.75 at 96 px is about the official sigma 4 at 518 px. Two sentences instead of the 48 of the
        # ensemble and no HSF (it moves image scores only) keep the test to seconds; both run elsewhere.
        lambda: _module(backbone, prompts=SMALL, blur_sigma=0.75, lr=0.003, use_hsf=False),
        held_out_sets,
        epochs=3,
        seed=111,
        image_size=SIZE,
        train_batch_size=8,
    )
    print(run.summary())
    assert run.last_loss < 0.9 * run.first_loss  # measured: 9.260 -> 6.513 in 3 epochs
    assert run.trained_pixel > run.untrained_pixel + 0.08  # measured: 0.484 -> 0.676
    # (other init seeds: 0.337 -> 0.728, 0.553 -> 0.647; 128 px passed them too: 0.463 -> 0.739,
    # 0.464 -> 0.706, 0.521 -> 0.629; 64 px failed one); lr 0: no change, the test fails
