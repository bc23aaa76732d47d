"""AA-CLIP's torch model: stage losses, grid blur, scores and the per-category set step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.aaclip.torch_model import AAClip, augment, grid_blur
from anomaly_vlm.methods.contract import Prediction, export_module, set_dependence


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _model(backbone: FrozenCLIP, **kwargs) -> AAClip:
    torch.manual_seed(0)
    return AAClip(backbone, **kwargs)


def test_defaults_scale_to_the_depth_and_bad_values_are_named(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    assert model.levels == (2, 4, 6, 8)
    assert (model.image_adapt_until, model.text_adapt_until, model.surgery_start) == (2, 1, 2)
    with pytest.raises(ValueError, match="method.image_adapt_until=9 outside 1..8"):
        _model(backbone, image_adapt_until=9)
    with pytest.raises(ValueError, match="method.text_loss_levels='some' is not one of"):
        _model(backbone, text_loss_levels="some")


def test_grid_blur_is_kornias_reflect_gaussian() -> None:
    maps = torch.rand(2, 9, 9, dtype=torch.float64)
    x = np.arange(7) - 3
    kernel = np.exp(-(x**2) / 2.0)
    kernel /= kernel.sum()
    expected = correlate1d(
        correlate1d(maps.numpy(), kernel, axis=1, mode="mirror"), kernel, axis=2, mode="mirror"
    )
    np.testing.assert_allclose(grid_blur(maps, 7, 1.0).numpy(), expected, atol=1e-12)


def test_stage_one_learns_from_the_last_level_unless_corrected(backbone: FrozenCLIP) -> None:
    images = torch.rand(2, 3, 128, 128)
    masks = (torch.rand(2, 128, 128) > 0.7).float()
    model = _model(backbone)
    pixels = model.frozen_features(images)["pixels"]
    ids = backbone.tokenize(["disc.", "a damaged disc."])
    text = model.encode_text(ids, 1).unsqueeze(0).expand(2, -1, -1)
    last = model.text_stage_loss(pixels, masks, text)
    model.text_loss_levels = "all"
    every = model.text_stage_loss(pixels, masks, text)
    targets = model.surgery_targets(pixels)
    per_level = [
        model.segmentation_loss(model.training_probabilities(t, text, (128, 128)), masks) for t in targets
    ]
    orthogonal = float(last["orthogonal_loss"])
    torch.testing.assert_close(
        float(last["loss"]), float(per_level[-1]) + 0.1 * orthogonal, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        float(every["loss"]), float(sum(per_level)) + 4 * 0.1 * orthogonal, rtol=1e-5, atol=1e-6
    )


def test_stage_one_targets_mix_the_batch_unless_corrected(backbone: FrozenCLIP) -> None:
    images = torch.rand(3, 3, 128, 128)
    model = _model(backbone)
    pixels = model.frozen_features(images)["pixels"]
    assert (
        float((model.surgery_targets(pixels)[-1][:1] - model.surgery_targets(pixels[:1])[-1]).abs().max())
        > 1e-3
    )
    model.surgery_mix_batch = False
    torch.testing.assert_close(
        model.surgery_targets(pixels)[-1][:1], model.surgery_targets(pixels[:1])[-1], atol=1e-5, rtol=1e-4
    )


def test_scores_and_the_set_step(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    ids = backbone.tokenize(["disc.", "a damaged disc."])
    with torch.no_grad():
        model.set_text(model.encode_text(ids, 1))
    images = torch.rand(3, 3, 128, 128)
    raw = model(images)
    with torch.no_grad():
        patches, detection = model.encode_image(model.frozen_features(images)["pixels"])
    torch.testing.assert_close(raw.image_score, (detection @ model.text_classifier[1] + 1) / 2)
    final = model.postprocess_set(raw)
    maps = (raw.anomaly_map - raw.anomaly_map.min()) / (raw.anomaly_map.max() - raw.anomaly_map.min())
    scores = (raw.image_score - raw.image_score.min()) / (raw.image_score.max() - raw.image_score.min())
    torch.testing.assert_close(final.anomaly_map, maps)
    torch.testing.assert_close(final.image_score, 0.5 * maps.flatten(1).amax(1) + 0.5 * scores)
    # The step depends on the set until its statistics are frozen; then an image scores the same alone.
    assert set_dependence(model) is not None
    model.freeze_set_statistics(model.set_statistics(raw))
    assert set_dependence(model) is None
    alone = model.postprocess_set(Prediction(raw.image_score[:1], raw.anomaly_map[:1]))
    torch.testing.assert_close(alone.image_score, final.image_score[:1])
    graph = export_module(model)
    score, anomaly_map = graph(backbone.normalize(images))
    torch.testing.assert_close(score, final.image_score, atol=1e-5, rtol=1e-4)


def test_augmentation_moves_image_and_mask_together() -> None:
    generator = torch.Generator().manual_seed(3)
    masks = torch.zeros(6, 32, 32)
    masks[:, 4:14, 6:20] = 1.0
    images = torch.stack([masks, torch.full_like(masks, 0.5), torch.rand(6, 32, 32)], dim=1)
    out_images, out_masks = augment(images, masks, generator, color=False, fill=[0.0, 0.5, 0.5])
    torch.testing.assert_close(out_images[:, 0], out_masks)  # channel 0 was the mask
    assert not torch.equal(out_masks, masks)  # six images: something moved
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}  # nearest neighbour keeps the mask binary
    jittered, _ = augment(images, masks, torch.Generator().manual_seed(3), color=True, fill=[0.0, 0.5, 0.5])
    assert float(jittered.min()) >= 0.0 and float(jittered.max()) <= 1.0


def _official_style_image_features(
    model: AAClip, pixels: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The official ``AdaptedCLIP.forward`` written out on the same weights: sequence-first tokens through
    blocks whose attention is a sequence-first ``nn.MultiheadAttention`` called with its default
    ``need_weights=True``, the adapters' mix after the first blocks, the taps after them."""
    backbone = model.backbone
    x = backbone.ln_pre(backbone.embed_patches(pixels, normalized=True)).transpose(0, 1).contiguous()
    taps = {}
    for index, block in enumerate(backbone.blocks, start=1):
        attention = torch.nn.MultiheadAttention(backbone.width, block.attn.num_heads)
        attention.load_state_dict(block.attn.state_dict())
        attention.requires_grad_(False)
        normed = block.ln_1(x)
        x = x + block.ls_1(attention(normed, normed, normed)[0])
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if index <= model.image_adapt_until:
            out = torch.nn.functional.leaky_relu(model.image_adapters[index - 1].fc(x))
            out = out * x.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True)
            x = 0.1 * out + (1 - 0.1) * x
        if index in model.levels:
            taps[index] = x[1:].transpose(0, 1)
    tokens = [backbone.ln_post(taps[level]) for level in model.levels]
    patches = [
        torch.nn.functional.normalize(p(t), dim=-1)
        for p, t in zip(model.seg_projections, tokens, strict=True)
    ]
    detection = torch.nn.functional.normalize(model.det_projection(tokens[-1]), dim=-1).mean(1)
    return patches, detection


@pytest.mark.parametrize("grad", [True, False], ids=["training", "test"])
def test_image_features_are_the_official_floats(backbone: FrozenCLIP, grad: bool) -> None:
    """In float32 the adapted tower computes the official float32 values bit for bit (the attention
    weights explicitly, as the official blocks do), so no adapter pre-activation near the LeakyReLU kink
    takes the other slope; a fused attention kernel rounds otherwise."""
    model = _model(backbone)
    pixels = model.frozen_features(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3)))
    with torch.set_grad_enabled(grad):
        patches, detection = model.encode_image(pixels["pixels"])
        official_patches, official_detection = _official_style_image_features(model, pixels["pixels"])
    for mine, theirs in zip(patches, official_patches, strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(detection, official_detection)
