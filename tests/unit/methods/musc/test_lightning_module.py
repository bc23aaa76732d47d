"""MuSc Lightning wrapper: options, RsCIN lists per dataset, transductive marking, user errors."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.data import DataError
from anomaly_vlm.methods.musc import MuScError, MuScModule
from anomaly_vlm.methods.musc.lightning_module import default_rscin_k
from anomaly_vlm.prompts import PromptSet

PROMPTS = PromptSet("unused", ["flawless {}"], ["damaged {}"], ["a photo of a {}."])


def test_rscin_list_follows_the_dataset_like_the_release():
    assert default_rscin_k("anomaly_vlm.data.datasets.VisA") == (1, 8, 9)
    assert default_rscin_k("anomaly_vlm.data.datasets.MVTecAD") == (1, 2, 3)
    assert default_rscin_k("anomaly_vlm.data.datasets.SyntheticAD") == (1, 2, 3)
    assert default_rscin_k(None) == (1, 2, 3)


def test_module_is_zero_shot_transductive_and_untrained(tiny_backbone):
    module = MuScModule(tiny_backbone, PROMPTS, dataset="anomaly_vlm.data.datasets.VisA")
    assert module.model.rscin_k == (1, 8, 9)
    assert MuScModule(tiny_backbone, PROMPTS, rscin_k=[]).model.rscin_k == ()
    assert module.transductive and module.model.transductive
    assert not module.is_trainable
    assert module.checkpoint_metadata()["transductive"] is True
    with pytest.raises(ValueError, match="zero-shot only"):
        MuScModule(tiny_backbone, PROMPTS, shots=1)


def test_whole_set_scoring_goes_through_the_module(tiny_backbone):
    module = MuScModule(tiny_backbone, PROMPTS)
    images = torch.rand(6, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    features = module.frozen_features(images)
    prediction = module.score_set(features)
    expected = module.model.score_set(features)
    torch.testing.assert_close(prediction.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(prediction.image_score, expected.image_score)


def test_a_single_image_is_a_user_error_that_explains_the_protocol(tiny_backbone):
    module = MuScModule(tiny_backbone, PROMPTS)
    features = module.frozen_features(torch.rand(1, 3, 128, 128))
    with pytest.raises(MuScError, match="MuSc is transductive.*at least 5 images") as raised:
        module.score_set(features)
    assert isinstance(raised.value, DataError)  # printed as one `error:` line by the entry points
    assert "\n" not in str(raised.value)
