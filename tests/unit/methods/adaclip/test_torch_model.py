"""AdaCLIP's pure torch model: taps, prompt plumbing, hybrid semantic fusion, loss, configuration errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.adaclip import AdaCLIP
from anomaly_vlm.methods.adaclip.torch_model import CategoryText, default_layers
from anomaly_vlm.methods.losses import dice_loss
from anomaly_vlm.prompts import PromptSet

PROMPTS = PromptSet(
    "adaclip_test",
    ["{}", "flawless {}"],
    ["damaged {}", "{} with defect"],
    ["a bad photo of a {}.", "a photo of the {}."],
)


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def _model(backbone: FrozenCLIP, **kwargs) -> AdaCLIP:
    torch.manual_seed(0)
    return AdaCLIP(backbone, **kwargs)


def _text(backbone: FrozenCLIP, category: str = "disc") -> CategoryText:
    normal, anomalous = PROMPTS.sentences(category)
    return CategoryText(backbone.tokenize(normal + anomalous), len(normal))


def test_default_taps_are_the_official_quarters() -> None:
    assert default_layers(24) == [6, 12, 18, 24]
    assert default_layers(8) == [2, 4, 6, 8]


def test_uncacheable_and_frozen_features_hold_no_learned_input(backbone: FrozenCLIP, images) -> None:
    model = _model(backbone)
    assert model.cacheable is False
    features = model.frozen_features(images)
    torch.testing.assert_close(features["global_embedding"], backbone.encode_image(images).global_embedding)
    torch.testing.assert_close(features["pixels"], backbone.normalize(images))


def test_text_of_a_batch_equals_each_image_alone(backbone: FrozenCLIP, images) -> None:
    """The sentences of every image carry that image's own dynamic tokens (one batched text pass)."""
    model = _model(backbone)
    text = _text(backbone)
    pooled = model.frozen_features(images)["global_embedding"]
    together = model.encode_text(text, pooled)
    alone = torch.cat([model.encode_text(text, pooled[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (2, 2, backbone.embed_dim)
    assert (together[0] - together[1]).abs().max() > 1e-4, "dynamic prompts differ per image"
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(2, 2))


def test_static_only_text_is_shared_and_first_static_set_is_unused(backbone: FrozenCLIP, images) -> None:
    model = _model(backbone, dynamic_prompts=False)
    text = _text(backbone)
    pooled = model.frozen_features(images)["global_embedding"]
    shared = model.encode_text(text, pooled)
    torch.testing.assert_close(shared[0], shared[1])
    shared.sum().backward()
    assert model.text_static.grad[0].abs().max() == 0  # block 1 gets no text prompt (official)
    assert model.text_static.grad[1:].abs().max() > 0


def test_hsf_is_the_mean_of_kmeans_cluster_means_of_the_top_patches(backbone: FrozenCLIP) -> None:
    model = _model(backbone, k_clusters=3)
    generator = torch.Generator().manual_seed(1)
    patches = [F.normalize(torch.randn(1, 64, 16, generator=generator), dim=-1) for _ in range(2)]
    logits = [torch.randn(1, 64, 2, generator=generator) for _ in range(2)]
    ours = model.hybrid_semantic_fusion(patches, logits)

    # The official loop: top 5k patches, KMeans on the taps concatenated, per cluster the mean of its
    # members' tokens of all taps, the mean of those centres, L2.
    probabilities = torch.stack(logits, 1).mean(1).softmax(-1)[..., 1]
    top = probabilities.topk(15, dim=1).indices[0]
    chosen = [tokens[0, top] for tokens in patches]
    labels = KMeans(3, n_init="auto", random_state=0).fit_predict(torch.cat(chosen, -1).numpy())
    centres = [torch.cat([tokens[labels == c] for tokens in chosen]).mean(0) for c in range(3)]
    torch.testing.assert_close(ours[0], F.normalize(torch.stack(centres).mean(0), dim=0))


def test_scores_and_maps_and_their_determinism(backbone: FrozenCLIP, images) -> None:
    model = _model(backbone, blur_sigma=0.0)
    with pytest.raises(RuntimeError, match="set_category"):
        model(images)
    model.set_category(_text(backbone))
    first, again = model(images), model(images)
    assert first.anomaly_map.shape == (2, 128, 128)
    assert torch.equal(first.image_score, again.image_score)  # seeded KMeans
    assert ((first.anomaly_map >= 0) & (first.anomaly_map <= 1)).all()
    cls, patches, logits, text = model._forward(model.frozen_features(images), [model.category_text] * 2)
    mean = torch.stack(logits, 1).mean(1)
    expected = model._grid_to_image(mean, (128, 128)).softmax(1)[:, 1]
    torch.testing.assert_close(first.anomaly_map, expected)
    fused = F.normalize(0.2 * model.hybrid_semantic_fusion(patches, logits) + 0.8 * cls, dim=-1)
    probabilities = (100 * torch.einsum("bd,bcd->bc", fused, text)).softmax(-1)[:, 1]
    torch.testing.assert_close(first.image_score, probabilities)


def test_row_dice_is_the_official_batch_of_one_arithmetic(backbone: FrozenCLIP, images) -> None:
    rows, whole = _model(backbone, dice_unit="row"), _model(backbone, dice_unit="image")
    prediction, target = torch.rand(1, 16, 16), (torch.rand(1, 16, 16) > 0.7).float()
    per_row = [dice_loss(prediction[:, r], target[:, r]) for r in range(16)]
    torch.testing.assert_close(rows._dice(prediction, target), torch.stack(per_row).mean())
    torch.testing.assert_close(whole._dice(prediction, target), dice_loss(prediction, target))


def test_loss_reaches_every_learnable_parameter(backbone: FrozenCLIP, images) -> None:
    model = _model(backbone)
    masks = torch.zeros(2, 128, 128)
    masks[1, 40:80, 30:70] = 1
    text = _text(backbone)
    losses = model.loss(
        model.frozen_features(images), masks, torch.tensor([0, 1]), [text, _text(backbone, "nut")]
    )
    torch.testing.assert_close(losses["loss"], losses["image_loss"] + losses["segmentation_loss"])
    losses["loss"].backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [9]}, "method.layers"),
        ({"prompt_depth": 5}, "method.prompt_depth=5"),
        ({"prompt_length": 0}, "method.prompt_length=0"),
        ({"static_prompts": False, "dynamic_prompts": False}, "static_prompts and dynamic_prompts"),
        ({"dice_unit": "pixel"}, "method.dice_unit='pixel'"),
    ],
)
def test_bad_configuration_names_the_key(backbone: FrozenCLIP, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        AdaCLIP(backbone, **kwargs)
