"""FAPrompt's torch model: the official arithmetic, the prior's patch choice, and the faithful bug."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.faprompt.torch_model import FAPrompt, aggregate_text, binary_focal_loss
from anomaly_vlm.methods.ops import encode_dpam, gaussian_blur
from anomaly_vlm.prompts.faprompt import FAPromptSet

PROMPTS = FAPromptSet("faprompt", deep_prompt_depth=4)


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _model(backbone: FrozenCLIP, **kwargs) -> FAPrompt:
    torch.manual_seed(0)
    return FAPrompt(backbone, PROMPTS, **{"blur_sigma": 2.5, **kwargs})


def _images(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def test_sentences_and_token_layout_are_the_official_ones(backbone: FrozenCLIP) -> None:
    normal, abnormal = PROMPTS.sentences()
    assert normal == ["N N N N N object."]
    assert abnormal == ["N N N N N A A damaged object."] * 10
    ids = _model(backbone).prompt_learner.token_ids
    # Verified ids of the official tokenizer: pos [49406, 333 x5, 14115, 269, 49407], neg adds 320 x2, 13568.
    assert ids[0, :9].tolist() == [49406, *[333] * 5, 14115, 269, 49407]
    assert ids[1, :12].tolist() == [49406, *[333] * 5, 320, 320, 13568, 14115, 269, 49407]
    assert ids.shape[0] == 11


def test_frozen_features_are_the_last_blocks_dpam_stream_and_cacheable(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    assert model.cacheable and model.dpam_start == 3 and model.layer == 8
    features = model.frozen_features(_images())
    global_embedding, patches = encode_dpam(backbone, _images(), [8], dpam_start=3)
    torch.testing.assert_close(features["global_embedding"], global_embedding)
    torch.testing.assert_close(features["patch_embeddings"], patches[8])


def test_abnormal_prompts_are_averaged_before_normalisation() -> None:
    raw = torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0]])
    # mean of the raw abnormal rows is (5, 0.5): dominated by the long one, not (0.5, 0.5)
    torch.testing.assert_close(aggregate_text(raw)[1], F.normalize(torch.tensor([5.0, 0.5]), dim=0))


def test_official_prior_reads_patches_zero_to_nine_the_corrected_one_the_top_ten(
    backbone: FrozenCLIP,
) -> None:
    model = _model(backbone)
    patches = torch.randn(2, 64, 5)
    abnormal = torch.rand(2, 64)
    torch.testing.assert_close(model.select_prior_tokens(patches, abnormal), patches[:, :10])
    model.prior_patches = "top"
    order = abnormal.argsort(dim=1, descending=True)[:, :10]
    expected = torch.stack([patches[i, order[i]] for i in range(2)])
    torch.testing.assert_close(model.select_prior_tokens(patches, abnormal), expected)
    with pytest.raises(ValueError, match="method.prior_patches='best' is not one of"):
        _model(backbone, prior_patches="best")


def test_bias_shifts_only_the_abnormal_prompts(backbone: FrozenCLIP) -> None:
    learner = _model(backbone).prompt_learner
    # a random bias: a constant one would vanish in the LayerNorms (they remove each token's mean)
    bias = torch.randn(backbone.text_width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        static = learner()
        shifted = learner(torch.stack([torch.zeros(backbone.text_width), bias]))
    torch.testing.assert_close(shifted[0], static, atol=1e-5, rtol=1e-5)  # zero bias: the static prompts
    torch.testing.assert_close(shifted[1, 0], static[0], atol=1e-5, rtol=1e-5)  # normal prompt unchanged
    assert (shifted[1, 1:] - static[1:]).abs().max() > 1e-3


def test_score_and_map_follow_the_official_test_script(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    features = model.frozen_features(_images())
    prediction = model.score(features)
    with torch.no_grad():
        parts = model.forward_features(features)
    p1, p2 = parts["p1"][..., 1], parts["p2"][..., 1]
    p_image = parts["image_logits"].softmax(-1)[:, 1]
    expected = 0.5 * (p_image + (2 * p1.amax(1) + p2.amax(1)) / 3)
    torch.testing.assert_close(prediction.image_score, expected)
    grid = ((p1 + p2) / 2).reshape(-1, 1, 8, 8)
    maps = F.interpolate(grid, size=(128, 128), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(prediction.anomaly_map, gaussian_blur(maps, 2.5), atol=1e-6, rtol=1e-5)


def test_loss_terms_and_their_official_weights(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    masks = torch.zeros(3, 128, 128)
    masks[1:, 40:80, 40:80] = 1
    labels = torch.tensor([0, 1, 1])
    losses = model.loss(_images(), masks, labels)
    expected = (
        losses["segmentation_loss"]
        + losses["image_loss"]
        + losses["score_loss"]
        + 0.1 * losses["diversity_loss"]
        + losses["bias_loss"]
    )
    torch.testing.assert_close(losses["loss"], expected)
    losses["loss"].backward()
    learner = model.prompt_learner
    for parameter in (
        learner.ctx_pos,
        learner.ctx_neg,
        learner.deep_prompts,
        learner.patch_meta_net.linear1.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().max() > 0
    # the bias loss is summed over the batch's normal images (one here), not averaged
    with torch.no_grad():
        bias = model.forward_features(model.frozen_features(_images()))["bias"]
    torch.testing.assert_close(losses["bias_loss"].detach(), (bias[0] ** 2).mean())


def test_binary_focal_loss_applies_bce_with_logits_to_a_probability_as_the_official_one() -> None:
    score, label = torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0])
    bce = F.binary_cross_entropy_with_logits(score, label, reduction="none")
    torch.testing.assert_close(binary_focal_loss(score, label), ((1 - torch.exp(-bce)) ** 2 * bce).mean())
    plain = F.binary_cross_entropy(score, label, reduction="none")
    torch.testing.assert_close(
        binary_focal_loss(score, label, on_logits=False), ((1 - torch.exp(-plain)) ** 2 * plain).mean()
    )


def test_text_pass_cut_at_the_end_token_equals_the_full_context(backbone: FrozenCLIP) -> None:
    cut, full = _model(backbone), _model(backbone, text_truncate=False)
    full.prompt_learner.load_state_dict(cut.prompt_learner.state_dict())
    bias = torch.randn(2, backbone.text_width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(cut.prompt_learner(bias), full.prompt_learner(bias), atol=1e-5, rtol=1e-5)
