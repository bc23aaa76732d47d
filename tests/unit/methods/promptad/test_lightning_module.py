"""PromptAD's Lightning wrapper: few-shot only, trains inside the category set-up, nothing for the runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from anomaly_vlm.methods.promptad import PromptADModule
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.prompts.promptad import PromptADPromptSet

CONF = Path(__file__).resolve().parents[4] / "conf" / "prompts" / "promptad.yaml"


@pytest.fixture(scope="module")
def prompt_set() -> PromptADPromptSet:
    data = yaml.safe_load(CONF.read_text())
    data.pop("_target_")
    return PromptADPromptSet(**data)


def test_refuses_zero_shot_and_other_prompt_sets(tiny_backbone, prompt_set) -> None:
    with pytest.raises(ValueError, match=r"method 'promptad' is few-shot only: .*shots=0 is not supported"):
        PromptADModule(tiny_backbone, prompt_set, shots=0)
    with pytest.raises(ValueError, match="prompts=promptad"):
        PromptADModule(tiny_backbone, PromptSet("p", ["{}"], ["bad {}"], ["a {}."]), shots=1)


def test_trains_inside_the_category_setup_under_inference_mode(tiny_backbone, prompt_set) -> None:
    method = PromptADModule(tiny_backbone, prompt_set, shots=1, epochs=2, progress=False)
    assert not method.is_trainable  # the runner must not call fit: there is no auxiliary data
    references = torch.rand(1, 3, 128, 128)
    # The category set-up runs in the test start, inside inference mode and no_grad; the prompts must still
    # learn there.
    with torch.inference_mode(), torch.no_grad():
        method.setup_category("nut", references)
        prediction = method.predict_images(torch.rand(2, 3, 128, 128))
    history = method.training_history["nut"]
    assert len(history["image"]) == len(history["pixel"]) == 2
    assert prediction.image_score.shape == (2,) and prediction.anomaly_map.shape == (2, 128, 128)
    counts = method.parameter_counts()
    assert counts["trainable"] == (3 * 4 + 4 * 1 + 1 * 4 + 4 * 1) * 64  # both branches' prompt vectors
    # Per-category prompts are relearned at set-up: a checkpoint carries metadata only.
    assert method.trainable_state_dict() == {}


def test_references_stay_rgb_while_test_images_are_bgr(tiny_backbone, prompt_set) -> None:
    method = PromptADModule(tiny_backbone, prompt_set, shots=1, epochs=1, progress=False)
    x = torch.rand(3, 3, 128, 128)
    chunked = method.reference_features(x, batch_size=2)
    torch.testing.assert_close(
        chunked["global"], method.frozen_features(x.flip(1))["global"], atol=1e-5, rtol=1e-4
    )
