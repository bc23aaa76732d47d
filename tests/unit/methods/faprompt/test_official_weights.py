"""``ckpt_path=<a file saved by the official FAPrompt train.py>``: mapped, shapes checked, others refused."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.faprompt import FAPromptModule
from anomaly_vlm.prompts.faprompt import FAPromptSet


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _module(backbone: FrozenCLIP, **kwargs) -> FAPromptModule:
    return FAPromptModule(backbone, FAPromptSet("faprompt", deep_prompt_depth=4), **kwargs)


def official_file(width: int = 64, embed: int = 64, depth: int = 4, k: int = 10) -> dict:
    """``{"prompt_learner": FAPrompt.state_dict()}`` in the official shapes (train.py:170-173)."""
    torch.manual_seed(4)
    learner = {
        "ctx_pos": torch.randn(1, 1, 5, width),
        "ctx_neg": torch.randn(1, 10, 2, width),
        "patch_meta_net.linear1.weight": torch.randn(embed * k // 16, embed * k),
        "patch_meta_net.linear1.bias": torch.randn(embed * k // 16),
        "patch_meta_net.linear2.weight": torch.randn(width, embed * k // 16),
        "patch_meta_net.linear2.bias": torch.randn(width),
        "token_prefix_pos": torch.randn(1, 1, 1, width),
        "token_suffix_pos": torch.randn(1, 1, 71, width),
        "token_prefix_neg": torch.randn(1, 10, 1, width),
        "token_suffix_neg": torch.randn(1, 10, 69, width),
        "tokenized_prompts_pos": torch.zeros(1, 1, 77, dtype=torch.long),
        "tokenized_prompts_neg": torch.zeros(1, 10, 77, dtype=torch.long),
    }
    for index in range(depth - 1):
        learner[f"compound_prompts_text.{index}"] = torch.randn(4, width)
        learner[f"compound_prompt_projections.{index}.weight"] = torch.randn(896, width)
        learner[f"compound_prompt_projections.{index}.bias"] = torch.randn(896)
    return {"prompt_learner": learner}


def test_official_file_fills_every_learned_parameter(backbone: FrozenCLIP, tmp_path) -> None:
    payload = official_file()
    path = tmp_path / "epoch_15.pth"
    torch.save(payload, path)
    module = _module(backbone)
    module.load_trainable_checkpoint(str(path))
    learner, official = module.model.prompt_learner, payload["prompt_learner"]
    torch.testing.assert_close(learner.ctx_pos.detach(), official["ctx_pos"][0, 0])
    torch.testing.assert_close(learner.ctx_neg.detach(), official["ctx_neg"][0])
    for index in range(3):
        torch.testing.assert_close(
            learner.deep_prompts[index].detach(), official[f"compound_prompts_text.{index}"]
        )
    torch.testing.assert_close(
        learner.patch_meta_net.linear1.weight.detach(), official["patch_meta_net.linear1.weight"]
    )
    torch.testing.assert_close(
        learner.patch_meta_net.linear2.bias.detach(), official["patch_meta_net.linear2.bias"]
    )
    assert module.checkpoint_origin == "official"


def test_files_of_other_shapes_and_of_anomalyclip_are_refused(backbone: FrozenCLIP, tmp_path) -> None:
    deeper = tmp_path / "deeper.pth"
    torch.save(official_file(depth=9), deeper)
    with pytest.raises(ValueError, match="compound_prompts_text.3"):
        _module(backbone).load_trainable_checkpoint(str(deeper))
    anomalyclip = official_file()
    learner = anomalyclip["prompt_learner"]
    for key in [key for key in learner if key.startswith("patch_meta_net")]:
        del learner[key]
    learner["ctx_neg"] = torch.randn(1, 1, 12, 64)
    path = tmp_path / "anomalyclip.pth"
    torch.save(anomalyclip, path)
    with pytest.raises(ValueError, match="AnomalyCLIP"):
        _module(backbone).load_trainable_checkpoint(str(path))
