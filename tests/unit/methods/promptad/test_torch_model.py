"""PromptAD's pure torch model on the tiny CLIP: prompts, frozen features, learning, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomaly_vlm.data.toy import render_sample
from anomaly_vlm.methods.contract import FrozenFeatureExtractor, Prediction
from anomaly_vlm.methods.promptad.torch_model import PromptADModel, default_memory_blocks
from anomaly_vlm.prompts.promptad import PromptADPromptSet

CONF = Path(__file__).resolve().parents[4] / "conf" / "prompts" / "promptad.yaml"


@pytest.fixture(scope="module")
def prompt_set() -> PromptADPromptSet:
    data = yaml.safe_load(CONF.read_text())
    data.pop("_target_")
    return PromptADPromptSet(**data)


def images(
    category: str, count: int, split: str = "train", defect: str | None = None, seed: int = 0
) -> torch.Tensor:
    arrays = [render_sample(category, defect, 128, seed=seed, index=i, split=split)[0] for i in range(count)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def test_prompt_lists_follow_the_release(prompt_set: PromptADPromptSet) -> None:
    normal, handcrafted, learned = prompt_set.sentences("metal_nut", 3)
    assert normal == ["N N N N metal nut."] * 3
    assert (
        len(handcrafted) == (8 + 4) * 3 and handcrafted[0] == handcrafted[2] == "N N N N damaged metal nut."
    )
    assert handcrafted[-1] == "N N N N metal nut with scratch."
    assert learned == ["N N N N A metal nut."] * 12
    assert prompt_set.states("unknown_part") == list(prompt_set.anomaly_states)


def test_learner_indexes_its_vectors_as_the_release(tiny_backbone, prompt_set: PromptADPromptSet) -> None:
    model = PromptADModel(tiny_backbone, prompt_set, progress=False)
    learner = model.new_learner("bottle", "image")
    assert tuple(learner.normal_context.shape) == (3, 4, 64) and tuple(learner.anomaly_context.shape) == (
        4,
        1,
        64,
    )
    normal, handcrafted, learned = learner.sentence_embeddings()
    assert normal.shape[0] == 3 and handcrafted.shape[0] == 11 * 3 and learned.shape[0] == 12
    for i in range(handcrafted.shape[0]):  # state-major: sentence i uses normal context i mod n_pro
        assert torch.equal(handcrafted[i, 1:5], learner.normal_context[i % 3])
    for i in range(12):  # normal context i mod 3, anomaly context i mod 4 (all 12 pairs)
        assert torch.equal(learned[i, 1:5], learner.normal_context[i % 3])
        assert torch.equal(learned[i, 5], learner.anomaly_context[i % 4, 0])
    features = learner()
    assert [tuple(f.shape) for f in features] == [(3, 64), (33, 64), (12, 64)]
    # Seeded: a second learner starts from the same vectors; the pixel branch has one normal prompt.
    assert torch.equal(model.new_learner("bottle", "image").normal_context, learner.normal_context)
    assert model.new_learner("bottle", "pixel").normal_context.shape[0] == 1


def test_frozen_features_channel_order_and_memory_quirk(tiny_backbone, prompt_set: PromptADPromptSet) -> None:
    x = images("disc", 2)
    model = PromptADModel(tiny_backbone, prompt_set, progress=False)
    assert isinstance(model, FrozenFeatureExtractor) and model.cacheable
    assert model.memory_blocks == default_memory_blocks(8) == [2, 5]
    test, reference = model.frozen_features(x), model.reference_features(x)
    assert set(test) == {"global", "patch", "memory_0", "memory_1"}
    assert torch.allclose(test["global"], model.reference_features(x.flip(1))["global"])  # BGR at test time
    assert not torch.allclose(test["global"], reference["global"])
    rgb = PromptADModel(tiny_backbone, prompt_set, test_channel_order="rgb", progress=False)
    assert torch.equal(rgb.frozen_features(x)["patch"], reference["patch"])
    # The original stream is untouched by the V-V stream: its CLS equals plain CLIP's.
    plain = torch.nn.functional.normalize(tiny_backbone.encode_image(x).global_embedding, dim=-1)
    assert torch.allclose(reference["global"], plain, atol=1e-5)
    # Memory: block output plus the next block's attention residual (official in-place quirk) or plain.
    clean = PromptADModel(tiny_backbone, prompt_set, memory_after_next_attention=False, progress=False)
    _, taps = tiny_backbone.run_blocks(tiny_backbone.embed_patches(x), layers=[2])
    expected = torch.nn.functional.normalize(taps[2][:, 1:], dim=-1)
    assert torch.allclose(clean.reference_features(x)["memory_0"], expected, atol=1e-5)
    assert not torch.allclose(reference["memory_0"], expected, atol=1e-3)
    for key, value in test.items():
        assert value.shape[0] == 2 and torch.allclose(value.norm(dim=-1), torch.ones(()), atol=1e-4), key


def test_learns_from_the_shots_and_scores_end_to_end(tiny_backbone, prompt_set: PromptADPromptSet) -> None:
    model = PromptADModel(tiny_backbone, prompt_set, epochs=6, lr=0.02, progress=False)
    with pytest.raises(RuntimeError, match="fit_category"):
        model.predict(images("disc", 1))
    history = model.fit_category("disc", model.reference_features(images("disc", 2)))
    for branch in ("image", "pixel"):
        assert len(history[branch]) == 6 and history[branch][-1] < history[branch][0] - 1e-3, history[branch]
    normal, anomalous = images("disc", 2, split="test"), images("disc", 2, defect="hole", seed=3)
    prediction = model.predict(torch.cat([normal, anomalous]))
    assert isinstance(prediction, Prediction) and tuple(prediction.anomaly_map.shape) == (4, 128, 128)
    assert torch.isfinite(prediction.image_score).all() and torch.isfinite(prediction.anomaly_map).all()
    scores, maps = model.score_full(model.frozen_features(normal))
    assert tuple(maps.shape) == (2, 400, 400) and scores.shape == (2,)
    # A query identical to a reference (in the references' channel order) has zero visual distance, hence
    # a zero image score (1 / (1/0 + 1/t)); any other image scores above it.
    rgb = PromptADModel(tiny_backbone, prompt_set, epochs=1, test_channel_order="rgb", progress=False)
    shots = images("disc", 2)
    rgb.fit_category("disc", rgb.reference_features(shots))
    scores = rgb.predict(torch.cat([shots[:1], anomalous])).image_score
    assert scores[0] < 1e-5 < scores[1:].min()


def test_training_is_deterministic(tiny_backbone, prompt_set: PromptADPromptSet) -> None:
    shots = images("brick", 1)
    texts = []
    for _ in range(2):
        model = PromptADModel(tiny_backbone, prompt_set, epochs=1, progress=False)
        model.fit_category("brick", model.reference_features(shots))
        texts.append((model.text_image.clone(), model.text_pixel.clone()))
    assert torch.equal(texts[0][0], texts[1][0]) and torch.equal(texts[0][1], texts[1][1])


def test_bad_settings_are_refused(tiny_backbone, prompt_set: PromptADPromptSet) -> None:
    with pytest.raises(ValueError, match="test_channel_order"):
        PromptADModel(tiny_backbone, prompt_set, test_channel_order="bgra")
    with pytest.raises(ValueError, match="memory_blocks"):
        PromptADModel(tiny_backbone, prompt_set, memory_blocks=[9])
    with pytest.raises(ValueError, match="reference images"):
        PromptADModel(tiny_backbone, prompt_set).fit_category("disc", {})


def test_half_precision_backbone_trains_and_scores(prompt_set: PromptADPromptSet) -> None:
    from anomaly_vlm.backbones import FrozenCLIP

    backbone = FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0, precision="fp16")
    assert backbone.dtype == torch.float16 and backbone.identity.endswith(":fp16")
    model = PromptADModel(backbone, prompt_set, epochs=1, progress=False)
    model.fit_category("nut", model.reference_features(images("nut", 1)))
    assert model.learners["image"].normal_context.dtype == torch.float16  # as the release's fp16 prompts
    prediction = model.predict(images("nut", 1, split="test"))
    assert prediction.image_score.dtype == torch.float32 and torch.isfinite(prediction.anomaly_map).all()
