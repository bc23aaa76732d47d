"""AnomalyCLIP's pure torch model: DPAM streams, scoring, glocal loss, the test-time blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.anomalyclip import AnomalyCLIP
from anomaly_vlm.methods.anomalyclip.torch_model import default_dpam_start
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.prompts import LearnablePromptSet

PROMPTS = LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4)


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def _model(backbone: FrozenCLIP, **kwargs) -> AnomalyCLIP:
    torch.manual_seed(0)
    return AnomalyCLIP(backbone, PROMPTS, **{"layers": [8], **kwargs})


def _attend(attention, queries, keys, values, shape):
    """softmax(Q Kᵀ / sqrt(d)) V per head, heads merged, then the block's out_proj."""
    weights = (queries @ keys.transpose(-1, -2) * queries.shape[-1] ** -0.5).softmax(-1)
    return attention.out_proj((weights @ values).transpose(1, 2).reshape(shape))


def _reference_streams(backbone: FrozenCLIP, images: torch.Tensor, start: int):
    """The official dual path written out with explicit Q/K/V maths (independent of the model code)."""
    x = backbone.ln_pre(backbone.embed_patches(images))
    dpam = None
    for index, block in enumerate(backbone.blocks, start=1):
        if index < start:
            x = block(x)
            continue
        attention = block.attn
        width, heads = x.shape[-1], attention.num_heads
        head = width // heads
        qkv = block.ln_1(x) @ attention.in_proj_weight.T + attention.in_proj_bias
        q, k, v = (
            t.reshape(x.shape[0], x.shape[1], heads, head).transpose(1, 2) for t in qkv.split(width, -1)
        )

        original = _attend(attention, q, k, v, x.shape)
        value_value = _attend(attention, v, v, v, x.shape)
        dpam = (x if dpam is None else dpam) + value_value  # no MLP on the DPAM stream
        x = x + original
        x = x + block.mlp(block.ln_2(x))
    return x, dpam


def test_default_dpam_start_matches_official_blocks_6_to_24() -> None:
    assert default_dpam_start(24) == 6
    assert default_dpam_start(12) == 3
    assert default_dpam_start(8) == 3


@torch.no_grad()
def test_dpam_off_gives_plain_clip_patch_features(backbone: FrozenCLIP, images: torch.Tensor) -> None:
    model = _model(backbone, layers=[4, 8], dpam=False)
    features = model.encode_image(images)
    plain = backbone.encode_image(images, layers=[4])
    torch.testing.assert_close(features.patch_embeddings[8], backbone.project(plain.patch_tokens))
    expected_4 = backbone.project(backbone.ln_post(plain.layer_tokens[4][:, 1:]))
    torch.testing.assert_close(features.patch_embeddings[4], expected_4)


@torch.no_grad()
def test_original_stream_cls_is_unchanged_by_dpam(backbone: FrozenCLIP, images: torch.Tensor) -> None:
    with_dpam = _model(backbone, dpam=True).encode_image(images)
    without = _model(backbone, dpam=False).encode_image(images)
    torch.testing.assert_close(with_dpam.global_embedding, without.global_embedding, rtol=0, atol=0)
    final, _ = backbone.run_blocks(backbone.embed_patches(images))
    # Official: CLS of the original stream @ proj, no ln_post.
    torch.testing.assert_close(with_dpam.global_embedding, final[:, 0] @ backbone.proj)
    with_ln_post = _model(backbone, global_ln_post=True).encode_image(images)
    torch.testing.assert_close(with_ln_post.global_embedding, backbone.pool(final))
    assert not torch.allclose(with_dpam.patch_embeddings[8], without.patch_embeddings[8], atol=1e-3)


@pytest.mark.parametrize("start", [3, 1, 8])
@torch.no_grad()
def test_dpam_stream_matches_the_official_dual_path(
    backbone: FrozenCLIP, images: torch.Tensor, start: int
) -> None:
    model = _model(backbone, layers=[2, 8], dpam_start=start)
    features = model.encode_image(images)
    original, dpam = _reference_streams(backbone, images, start)
    torch.testing.assert_close(
        features.global_embedding, original[:, 0] @ backbone.proj, rtol=1e-4, atol=1e-5
    )
    expected = backbone.ln_post(dpam[:, 1:]) @ backbone.proj
    torch.testing.assert_close(features.patch_embeddings[8], expected, rtol=1e-4, atol=1e-5)
    if start > 2:  # a block before DPAM starts taps the plain stream
        _, taps = backbone.run_blocks(backbone.embed_patches(images), layers=[2])
        torch.testing.assert_close(
            features.patch_embeddings[2], backbone.ln_post(taps[2][:, 1:]) @ backbone.proj
        )


@torch.no_grad()
def test_predict_scores_and_blurred_summed_maps(backbone: FrozenCLIP, images: torch.Tensor) -> None:
    model = _model(backbone, layers=[6, 8])
    text = model.text_features()
    prediction = model.predict(images, text)
    scores, maps = prediction.image_score, prediction.anomaly_map
    features = model.encode_image(images)
    logits = F.normalize(features.global_embedding, dim=-1) @ text.T / 0.07
    torch.testing.assert_close(scores, logits.softmax(-1)[:, 1])
    summed = 0
    for index in (6, 8):
        patches = F.normalize(features.patch_embeddings[index], dim=-1)
        grid = (patches @ text.T / 0.07).softmax(-1)[..., 1].reshape(2, 1, 8, 8)
        # softmax on the grid first, then bilinear upsampling (align_corners=False), as the official code
        summed = summed + F.interpolate(grid, size=(128, 128), mode="bilinear", align_corners=False)[:, 0]
    expected = np.stack([gaussian_filter(m, sigma=4) for m in summed.numpy()])
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert maps.shape == (2, 128, 128) and bool(((scores >= 0) & (scores <= 1)).all())


def test_glocal_loss_composition_and_gradients(backbone: FrozenCLIP, images: torch.Tensor) -> None:
    model = _model(backbone)
    masks = torch.zeros(2, 128, 128)
    masks[1, 30:60, 40:90] = 1.0
    labels = torch.tensor([0, 1])
    losses = model.loss(images, masks, labels)
    with torch.no_grad():
        features = model.encode_image(images)
        text = model.text_features()
        global_loss = F.cross_entropy(model.image_logits(features, text), labels)
        probs = model.patch_probabilities(features, text, (128, 128))[8]
        local = focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
    torch.testing.assert_close(losses["global_loss"].detach(), global_loss)
    torch.testing.assert_close(losses["local_loss"].detach(), local)
    torch.testing.assert_close(losses["loss"].detach(), global_loss + 4.0 * local)
    losses["loss"].backward()
    trained = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert trained == {
        "prompt_encoder.context_normal",
        "prompt_encoder.context_anomalous",
        "prompt_encoder.deep_prompts",
    }


def test_bad_configuration_names_the_key(backbone: FrozenCLIP) -> None:
    with pytest.raises(ValueError, match=r"method.layers: layers \[24\] outside 1..8"):
        AnomalyCLIP(backbone, PROMPTS, layers=[24])
    with pytest.raises(ValueError, match="method.dpam_start=9"):
        AnomalyCLIP(backbone, PROMPTS, layers=[8], dpam_start=9)
    with pytest.raises(ValueError, match="method.layers is empty"):
        AnomalyCLIP(backbone, PROMPTS, layers=[])
