"""The alignment strategies: composed of the published methods' own parts, one scoring rule for all."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.methods.adaclip.torch_model import AdaCLIP
from anomaly_vlm.methods.alignment import STRATEGIES, AlignmentModel, parse_alignment
from anomaly_vlm.methods.anomalyclip.torch_model import AnomalyCLIP
from anomaly_vlm.methods.aprillab.torch_model import AprilGAN
from anomaly_vlm.methods.hybrid_prompts import CategoryText
from anomaly_vlm.methods.winclip.torch_model import WinCLIPModel
from anomaly_vlm.prompts.learnable import LearnablePromptSet

TRAINABLE = {"none": False, "windows": False, "surgery": False}


def _images(count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def _category_text(backbone) -> CategoryText:
    sentences = ["a photo of a flawless object.", "a photo of a damaged object."]
    return CategoryText(backbone.tokenize(sentences), 1)


def test_alignment_names_parse_into_parts():
    assert parse_alignment("none") == frozenset()
    assert parse_alignment("both_prompts") == {"text_prompts", "visual_prompts"}
    assert parse_alignment("surgery+text_prompts") == {"surgery", "text_prompts"}
    assert parse_alignment("adaclip") == {"linear", "hybrid_prompts", "cls_projection"}
    with pytest.raises(ValueError, match="'hybrid_prompts' and 'visual_prompts' cannot be combined"):
        parse_alignment("hybrid_prompts+visual_prompts")
    with pytest.raises(ValueError, match="unknown part 'dpam'"):
        parse_alignment("dpam")
    with pytest.raises(ValueError, match="'surgery' and 'linear' cannot be combined"):
        parse_alignment("surgery+linear")


@pytest.mark.parametrize("alignment", STRATEGIES)
def test_every_strategy_scores_and_trains_only_its_parts(tiny_backbone, alignment):
    torch.manual_seed(0)
    model = AlignmentModel(tiny_backbone, alignment=alignment)
    model.set_text_classifier(torch.nn.functional.normalize(torch.randn(2, tiny_backbone.embed_dim), dim=-1))
    model.set_category(_category_text(tiny_backbone))
    images = _images()
    prediction = model(images)
    assert prediction.image_score.shape == (2,)
    assert prediction.anomaly_map.shape == (2, 128, 128)
    assert torch.isfinite(prediction.anomaly_map).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert bool(trainable) == TRAINABLE.get(alignment, True)
    if trainable:
        masks = torch.zeros(2, 128, 128)
        masks[1, 40:80, 40:80] = 1.0
        losses = model.loss_from_features(model.frozen_features(images), masks, torch.tensor([0, 1]))
        losses["loss"].backward()
        assert all(p.grad is not None for p in trainable)
        assert not any(p.grad is not None for p in tiny_backbone.parameters())


def test_windows_are_winclips_window_embeddings(tiny_backbone):
    ours = AlignmentModel(tiny_backbone, alignment="windows", scales=(2, 3)).frozen_features(_images())
    theirs = WinCLIPModel(tiny_backbone, scales=(2, 3)).frozen_features(_images())
    for index in range(2):
        torch.testing.assert_close(ours[f"windows_{index}"], theirs[f"windows_{index}"], rtol=0, atol=0)
    torch.testing.assert_close(ours["global_embedding"], theirs["image_embedding"], rtol=0, atol=0)


def test_surgery_is_anomalyclips_dpam_stream(tiny_backbone):
    taps = (4, 8)
    ours = AlignmentModel(tiny_backbone, alignment="surgery", layers=taps).frozen_features(_images())
    prompts = LearnablePromptSet(name="t", context_length=4, deep_prompt_length=2, deep_prompt_depth=2)
    theirs = AnomalyCLIP(tiny_backbone, prompts, layers=taps).frozen_features(_images())
    for tap in taps:
        torch.testing.assert_close(ours[f"tap_{tap}"], theirs[f"patch_embeddings_{tap}"], rtol=0, atol=0)


def test_linear_is_aprilgans_per_tap_projection(tiny_backbone):
    taps = (2, 4, 6, 8)
    ours = AlignmentModel(tiny_backbone, alignment="linear", layers=taps)
    theirs = AprilGAN(tiny_backbone, stages=taps)
    ours.projections.load_state_dict(theirs.projections.state_dict())
    images = _images()
    _, projected = ours.aligned(ours.frozen_features(images))
    features = theirs.frozen_features(images)
    for projection, tap, tokens in zip(theirs.projections, taps, projected, strict=True):
        torch.testing.assert_close(tokens, projection(features[f"block_{tap}"][:, 1:]), rtol=0, atol=0)


def test_the_adaclip_preset_is_adaclips_own_alignment(tiny_backbone):
    """alignment=adaclip: AdaCLIP's hybrid (static + dynamic) prompts on both sides, its tap projections
    and CLS projection; with AdaCLIP's parameters the aligned features and per-image text are AdaCLIP's."""
    taps = [2, 4, 6, 8]
    torch.manual_seed(0)
    ours = AlignmentModel(tiny_backbone, alignment="adaclip", layers=taps)
    theirs = AdaCLIP(tiny_backbone, layers=taps, prompt_fp16=False, use_hsf=False)
    prompt_keys = ("visual_static", "text_static", "visual_generator", "text_generator")
    ours.hybrid.load_state_dict(
        {key: value for key, value in theirs.state_dict().items() if key.startswith(prompt_keys)}
    )
    ours.projections.load_state_dict(theirs.patch_projections.state_dict())
    ours.cls_projection.load_state_dict(theirs.cls_projection.state_dict())
    text = _category_text(tiny_backbone)
    ours.set_category(text)
    images = _images()
    features = ours.frozen_features(images)
    for key, value in theirs.frozen_features(images).items():
        torch.testing.assert_close(features[key], value, rtol=0, atol=0)
    pooled, patches = ours.aligned(features)
    cls, their_patches = theirs.encode_image(features)
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(unit(pooled, dim=-1), cls, rtol=0, atol=0)
    for mine, reference in zip(patches, their_patches, strict=True):
        torch.testing.assert_close(unit(mine, dim=-1), reference, rtol=0, atol=0)
    per_image = ours.text_for(features)
    assert per_image.shape == (2, 2, tiny_backbone.embed_dim)
    expected = theirs.encode_text(text, features["global_embedding"])
    torch.testing.assert_close(per_image, expected, rtol=0, atol=0)
    # The text is conditioned on each image (dynamic prompts), not one pair for the batch.
    assert not torch.allclose(per_image[0], per_image[1])
