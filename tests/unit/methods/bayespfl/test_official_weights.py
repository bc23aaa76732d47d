"""``ckpt_path=<a Bayes-PFL file of the official train.py or its release>``: mapped, checked, stage 2."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.bayespfl import BayesPFLModule
from anomaly_vlm.methods.bayespfl.official_weights import official_name
from anomaly_vlm.prompts import PromptSet

PROMPTS = PromptSet("two_prompt", ["{}"], ["damaged {}"], ["{}"])


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _module(backbone: FrozenCLIP, **kwargs) -> BayesPFLModule:
    return BayesPFLModule(backbone, PROMPTS, **{"sample_num": 2, "topk": 50, **kwargs})


def official_file(module: BayesPFLModule) -> dict:
    """``{"MyModel": Context_Prompting.state_dict()}``: the trained tensors under the official names, plus
    the reconstruction branch and the shared encoders listed again under each flow (VPB.py:205-225)."""
    torch.manual_seed(5)
    state = {
        official_name(name): torch.randn_like(parameter)
        for name, parameter in module.model.named_parameters()
        if not name.startswith("backbone.")
    }
    for flow, encoder in (
        ("context", "context_encoder"),
        ("normal", "state_encoder"),
        ("abnormal", "state_encoder"),
    ):
        for key in [key for key in state if key.startswith(f"{encoder}.")]:
            state[f"PFL_{flow}.encoder.{key.split('.', 1)[1]}"] = state[key]
        for index in (0, 2, 4):
            state[f"PFL_{flow}.decoder.weight_mean.module.{index}.weight"] = torch.zeros(2, 2)
            state[f"PFL_{flow}.decoder.weight_mean.module.{index}.bias"] = torch.zeros(2)
        state[f"PFL_{flow}.p_mu.0.weight"], state[f"PFL_{flow}.p_mu.0.bias"] = (
            torch.zeros(2, 2),
            torch.zeros(2),
        )
    for decoder in ("context_decoder", "state_decoder"):
        for index in (0, 2, 4):
            state[f"{decoder}.weight_mean.module.{index}.weight"] = torch.zeros(2, 2)
            state[f"{decoder}.weight_mean.module.{index}.bias"] = torch.zeros(2)
    return {"MyModel": state}


def test_release_file_fills_every_learned_parameter_and_scores_with_stage_2(backbone, tmp_path) -> None:
    module = _module(backbone)
    payload = official_file(module)
    path = tmp_path / "train_visa.pth"
    torch.save(payload, path)
    module.load_trainable_checkpoint(str(path))
    official = payload["MyModel"]
    named = dict(module.model.named_parameters())
    torch.testing.assert_close(
        named["context_flow.amor_u.weight"].detach(), official["PFL_context.amor_u.weight"]
    )
    torch.testing.assert_close(named["normal_flow.state"].detach(), official["PFL_normal.state"])
    torch.testing.assert_close(
        named["rca.linear_proj.3.weight"].detach(), official["RCA.linear_proj.3.weight"]
    )
    torch.testing.assert_close(named["prompt_state_abnormal"].detach(), official["prompt_state_abnormal"])
    assert module.checkpoint_origin == "official"
    module.setup_category("disc", None)
    assert module.model.stage == 2
    trained_here = _module(backbone)
    trained_here.setup_category("disc", None)
    assert trained_here.model.stage == 1
    assert _module(backbone, test_stage=1).model.stage == 1


def test_files_of_other_settings_are_refused(backbone, tmp_path) -> None:
    payload = official_file(_module(backbone, num_flows=4))
    path = tmp_path / "flows4.pth"
    torch.save(payload, path)
    with pytest.raises(
        ValueError, match=r"PFL_context.amor_u.weight' has shape \(256, 64\), this run needs \(640, 64\)"
    ):
        _module(backbone).load_trainable_checkpoint(str(path))


def test_a_train_py_file_is_scored_with_the_stage_in_its_name(backbone, tmp_path) -> None:
    payload = official_file(_module(backbone))
    for name, stage in (("epoch_post_12_1.pth", 1), ("epoch_post_30_2.pth", 2), ("train_mvtec.pth", 2)):
        torch.save(payload, tmp_path / name)
        module = _module(backbone)
        module.load_trainable_checkpoint(str(tmp_path / name))
        module.setup_category("disc", None)
        assert module.model.stage == stage, name


def test_saved_category_state_keeps_the_stage(backbone, tmp_path) -> None:
    from anomaly_vlm.deploy.state import category_state, load_category_state

    path = tmp_path / "train_visa.pth"
    torch.save(official_file(_module(backbone)), path)
    module = _module(backbone)
    module.load_trainable_checkpoint(str(path))
    module.setup_category("disc", None)
    fresh = _module(backbone)
    load_category_state(fresh, category_state(module))
    assert fresh.model.stage == 2
