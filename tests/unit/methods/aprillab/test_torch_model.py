"""APRIL-GAN torch model and Lightning wrapper: stages, map arithmetic, few-shot, scores, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.aprillab import AprilGAN, AprilGANModule, default_stages
from anomaly_vlm.methods.contract import Prediction
from anomaly_vlm.prompts import PromptSet

PROMPTS = PromptSet("test", ["flawless {}"], ["damaged {}"], ["a photo of a {}."])


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=3)


def _module(backbone: FrozenCLIP, **kwargs) -> AprilGANModule:
    torch.manual_seed(0)
    return AprilGANModule(backbone, PROMPTS, **kwargs)


def test_default_stages_scale_the_published_blocks_to_the_depth():
    assert default_stages(24) == (6, 12, 18, 24)
    assert default_stages(12) == (3, 6, 9, 12)
    assert default_stages(8) == (2, 4, 6, 8)
    with pytest.raises(ValueError, match="method.stages"):
        default_stages(2)


def test_stages_default_to_the_backbone_depth_and_explicit_ones_are_checked(backbone):
    model = AprilGAN(backbone)
    assert model.stages == (2, 4, 6, 8)
    assert [tuple(layer.weight.shape) for layer in model.projections] == [(64, 64)] * 4
    assert all(layer.bias is not None for layer in model.projections)
    assert AprilGAN(backbone, stages=[1, 8]).stages == (1, 8)
    with pytest.raises(ValueError, match=r"method.stages=\[3, 9\].*\[9\] outside 1..8"):
        AprilGAN(backbone, stages=[3, 9])
    with pytest.raises(ValueError, match="repeats"):
        AprilGAN(backbone, stages=[3, 3])


def test_zero_shot_map_and_score_follow_the_reference_arithmetic(backbone):
    module = _module(backbone)
    text = F.normalize(torch.randn(2, backbone.embed_dim), dim=-1)
    module.model.set_text_classifier(text)
    images = torch.rand(2, 3, 128, 128)
    prediction = module.predict_images(images)
    scores, maps = prediction.image_score, prediction.anomaly_map

    features = backbone.encode_image(images, layers=(2, 4, 6, 8))
    expected_map = torch.zeros(2, 128, 128)
    for projection, block in zip(module.model.projections, (2, 4, 6, 8), strict=True):
        tokens = projection(features.layer_tokens[block][:, 1:])
        tokens = tokens / tokens.norm(dim=-1, keepdim=True)
        logits = (100.0 * tokens @ text.T).permute(0, 2, 1).reshape(2, 2, 8, 8)
        logits = F.interpolate(logits, size=128, mode="bilinear", align_corners=True)
        expected_map += torch.softmax(logits, dim=1)[:, 1]
    global_embedding = features.global_embedding / features.global_embedding.norm(dim=-1, keepdim=True)
    expected_scores = (100.0 * global_embedding @ text.T).softmax(-1)[:, 1]
    torch.testing.assert_close(maps, expected_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, expected_scores, atol=1e-6, rtol=1e-5)
    assert maps.max() <= 4.0 + 1e-6  # a sum of four probabilities, not a mean


def test_few_shot_map_is_min_cosine_distance_of_raw_tokens(backbone):
    module = _module(backbone)
    references = torch.rand(2, 3, 128, 128)
    query = torch.rand(1, 3, 128, 128)
    module.setup_category("thing", None)
    prediction = module.predict_images(torch.cat([references[:1], query]))
    _, zero_shot = prediction.image_score, prediction.anomaly_map

    module.setup_category("thing", references)
    assert [bank.shape for bank in module.model.memory] == [torch.Size([2 * 64, 64])] * 4
    prediction = module.predict_images(torch.cat([references[:1], query]))
    _, with_memory = prediction.image_score, prediction.anomaly_map
    # A reference image is its own nearest neighbour: distance 0 everywhere, map unchanged.
    torch.testing.assert_close(with_memory[0], zero_shot[0], atol=1e-4, rtol=0)

    taps = backbone.encode_image(query, layers=(2, 4, 6, 8)).layer_tokens
    expected = torch.zeros(128, 128)
    for block in (2, 4, 6, 8):
        bank = backbone.encode_image(references, layers=(block,)).layer_tokens[block][:, 1:].reshape(-1, 64)
        cosine = F.normalize(taps[block][0, 1:], dim=-1) @ F.normalize(bank, dim=-1).T
        nearest = (1 - cosine).min(dim=1).values.reshape(1, 1, 8, 8)
        expected += F.interpolate(nearest, size=128, mode="bilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(with_memory[1] - zero_shot[1], expected, atol=1e-4, rtol=1e-4)


def test_few_shot_image_score_combines_text_and_category_min_max_at_the_end(backbone):
    module = _module(backbone, shots=1)
    module.setup_category("thing", torch.rand(1, 3, 128, 128))
    images = torch.rand(5, 3, 128, 128)
    with torch.no_grad():
        parts = [module.predict_images(images[:3]), module.predict_images(images[3:])]
    text = torch.cat([part.image_score for part in parts]).numpy()
    maxima = torch.cat([part.anomaly_map for part in parts]).flatten(1).amax(1).numpy()
    np.testing.assert_array_equal(
        torch.cat([part.extras["text_probability"] for part in parts]).numpy(), text
    )
    # The set-level step runs on the whole category's prediction, however it was batched.
    final = module.postprocess_set(Prediction.concat(parts)).image_score.numpy()
    expected = 0.5 * (text + (maxima - maxima.min()) / (maxima.max() - maxima.min()))
    np.testing.assert_allclose(final, expected, rtol=1e-6)
    # Equal maxima: the normalised term is zero, not a division by zero.
    flat = Prediction(
        torch.tensor([0.2, 0.4]),
        torch.ones(2, 4, 4),
        {"text_probability": torch.tensor([0.2, 0.4]), "map_max": torch.ones(2)},
    )
    np.testing.assert_allclose(module.postprocess_set(flat).image_score.numpy(), [0.1, 0.2])
    # Zero-shot keeps the text probability: no extras, nothing to combine.
    module.setup_category("other", None)
    zero_shot = module.predict_images(images[:2])
    assert zero_shot.extras == {}
    assert module.postprocess_set(zero_shot).image_score is zero_shot.image_score


def test_training_step_updates_only_the_projections(backbone):
    from anomaly_vlm.data.batch import AnomalyBatch

    module = _module(backbone)
    mask = torch.zeros(2, 128, 128)
    mask[:, 40:60, 40:60] = 1
    batch = AnomalyBatch(
        image=torch.rand(2, 3, 128, 128),
        label=torch.tensor([1, 1]),
        category=["a", "b"],
        path=["x", "y"],
        defect_type=["d", "d"],
        mask=mask,
    )
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.5, 0.999)
    frozen = {name: value.clone() for name, value in backbone.state_dict().items()}
    before = [layer.weight.clone() for layer in module.model.projections]
    loss, per_stage = module.segmentation_loss(batch)
    assert len(per_stage) == 4 and torch.isclose(loss, torch.stack(per_stage).sum())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(
        not torch.equal(b, layer.weight) for b, layer in zip(before, module.model.projections, strict=True)
    )
    assert all(torch.equal(frozen[name], value) for name, value in backbone.state_dict().items())
    assert sorted(module.trainable_state_dict()) == sorted(
        f"model.projections.{i}.{kind}" for i in range(4) for kind in ("weight", "bias")
    )


def test_checkpoint_reloads_and_refuses_other_stages_or_backbone(backbone, tmp_path):
    trained = _module(backbone)
    with torch.no_grad():
        for layer in trained.model.projections:
            layer.weight.add_(1.0)
    checkpoint: dict = {}
    trained.on_save_checkpoint(checkpoint)
    assert checkpoint["anomaly_vlm"]["stages"] == [2, 4, 6, 8]
    assert (
        checkpoint["anomaly_vlm"]["image_size"] == 128 and checkpoint["anomaly_vlm"]["prompt_set"] == "test"
    )
    path = tmp_path / "trained.ckpt"
    torch.save(checkpoint, path)

    fresh = _module(backbone)
    fresh.load_trainable_checkpoint(str(path))
    for a, b in zip(fresh.model.projections, trained.model.projections, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)

    with pytest.raises(
        ValueError, match=r"stages: checkpoint has \[2, 4, 6, 8\], this run has \[1, 3, 5, 7\]"
    ):
        _module(backbone, stages=[1, 3, 5, 7]).load_trainable_checkpoint(str(path))
    other = FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=4)
    with pytest.raises(ValueError, match="backbone: checkpoint has 'anomaly-vlm-tiny:random:seed3'"):
        _module(other).load_trainable_checkpoint(str(path))
