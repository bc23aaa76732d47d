"""FLOPs per image through ``predict_images``."""

from __future__ import annotations

import torch
from torch import nn

from anomaly_vlm.callbacks.efficiency import flops_per_image


class _Linear(nn.Module):
    """predict_images = one [HW x 3] @ [3 x 5] product per image: 2 * HW * 3 * 5 FLOPs."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 5))

    def predict_images(self, images):
        pixels = images.flatten(2).transpose(1, 2)  # [B, HW, 3]
        out = pixels @ self.weight
        return out.mean((1, 2)), out[..., 0].reshape(images.shape[0], *images.shape[-2:])


def test_flops_match_the_hand_count() -> None:
    assert flops_per_image(_Linear(), image_size=8) == 2 * 64 * 3 * 5


def test_flops_of_the_clip_baseline() -> None:
    from anomaly_vlm.backbones import FrozenCLIP
    from anomaly_vlm.methods.clip import CLIPBaselineModule
    from anomaly_vlm.prompts import PromptSet

    prompts = PromptSet("two_prompt", ["flawless {}"], ["damaged {}"], ["a photo of a {}."])
    method = CLIPBaselineModule(FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0), prompts)
    method.setup_category("brick", None)
    flops = flops_per_image(method, 128)
    # 8 blocks of width 64 on 65 tokens: at least the MLPs' 2 * 65 * 64 * 256 * 2 * 8 FLOPs.
    assert flops > 2 * 65 * 64 * 256 * 2 * 8
    assert flops == flops_per_image(method, 128)
