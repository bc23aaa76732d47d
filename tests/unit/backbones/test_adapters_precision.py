"""Learned float32 hooks (AA-CLIP's residual adapters) inside a backbone in mixed and pure bf16."""

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.backbones.adapters import ResidualAdapter, encode_image_adapted, encode_text_adapted


def tiny(mode: str) -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0, precision=mode)


def cosine(a, b):
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1)).min().item()


@pytest.mark.parametrize("mode", ["amp-bf16", "bf16"])
def test_float32_adapters_inside_a_low_precision_backbone_get_gradients_close_to_fp32(tiny_backbone, mode):
    """AA-CLIP's float32 residual adapters met bf16 streams (expected m1 and m2 to have the same dtype)."""
    images = torch.rand(1, 3, 128, 128)
    backbone = tiny(mode)
    grads = {}
    for name, model in (("fp32", tiny_backbone), (mode, backbone)):
        torch.manual_seed(0)
        image_adapter, text_adapter = ResidualAdapter(model.width), ResidualAdapter(model.text_width)
        features = encode_image_adapted(model, images, {1: image_adapter}, [2], normalized=False)
        ends = encode_text_adapted(model, model.tokenize(["a photo of a thing"]), {1: text_adapter}, False)
        assert features.layer_tokens[2].dtype == features.global_embedding.dtype == torch.float32
        assert ends.dtype == torch.float32
        # Fixed random directions: a LayerNorm output's mean square is constant, its gradient nothing.
        directions = torch.randn(model.width + model.text_width, generator=torch.Generator().manual_seed(2))
        image_part = features.layer_tokens[2] @ directions[: model.width]
        (image_part.mean() + (ends @ directions[model.width :]).mean()).backward()
        grads[name] = [image_adapter.fc.weight.grad, text_adapter.fc.weight.grad]
    for got, expected in zip(grads[mode], grads["fp32"], strict=True):
        assert got.dtype == torch.float32 and got.abs().sum() > 0
        assert cosine(got[None], expected[None]) > 0.99
