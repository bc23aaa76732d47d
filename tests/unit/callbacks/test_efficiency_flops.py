"""FLOPs per image: the frozen half plus the scoring half, equal to a count through ``predict_images``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from anomaly_vlm.cache import FeatureCache
from anomaly_vlm.callbacks.efficiency import flops_per_image


class _Projection(nn.Module):
    """frozen_features = one [HW x 3] @ [3 x 5] product per image; score = [HW x 5] @ [5 x 1]."""

    cacheable = False

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 5))

    def frozen_features(self, images):
        return {"tokens": images.flatten(2).transpose(1, 2) @ self.weight}

    def score(self, features):
        out = features["tokens"] @ torch.ones(5, 1)
        return out.mean((1, 2)), out[..., 0]


class _Method:
    device = torch.device("cpu")
    transductive = False

    def __init__(self) -> None:
        self.model = _Projection()

    def score(self, features):
        return self.model.score(features)


def test_flops_match_the_hand_count() -> None:
    assert flops_per_image(_Method(), image_size=8) == 2 * 64 * 3 * 5 + 2 * 64 * 5


def _tiny_methods():
    from anomaly_vlm.backbones import FrozenCLIP
    from anomaly_vlm.methods.aprillab import AprilGANModule
    from anomaly_vlm.methods.clip import CLIPBaselineModule
    from anomaly_vlm.methods.winclip import WinCLIPModule
    from anomaly_vlm.prompts import PromptSet

    prompts = PromptSet("two_prompt", ["flawless {}"], ["damaged {}"], ["a photo of a {}."])
    backbone = FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)
    references = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    methods = {
        "clip": (CLIPBaselineModule(backbone, prompts), None),
        "winclip": (WinCLIPModule(backbone, prompts, shots=2), references),
        "aprillab": (AprilGANModule(backbone, prompts, shots=2), references),
    }
    for method, reference_images in methods.values():
        method.setup_category("brick", reference_images)
    return {name: method for name, (method, _) in methods.items()}


@pytest.fixture(scope="module")
def tiny_methods():
    return _tiny_methods()


@pytest.mark.parametrize("name", ["clip", "winclip", "aprillab"])
def test_split_count_equals_the_count_through_predict_images(tiny_methods, name, tmp_path) -> None:
    method = tiny_methods[name]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        method.predict_images(torch.rand(1, 3, 128, 128))
    whole = int(counter.get_total_flops())
    assert flops_per_image(method, 128) == whole
    # With a cache the frozen half is counted once per namespace; the next count runs no encoder pass.
    cache = FeatureCache(tmp_path / "features")
    assert flops_per_image(method, 128, cache) == whole
    calls = []
    # The patch embedding (the image encoder's only convolution) never runs.
    hooks = [
        module.register_forward_hook(lambda *args: calls.append(1))
        for module in method.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        assert flops_per_image(method, 128, FeatureCache(tmp_path / "features")) == whole
    finally:
        for hook in hooks:
            hook.remove()
    assert hooks and not calls
