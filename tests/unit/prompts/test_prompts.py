import pytest
import torch

from anomaly_vlm.prompts import PromptSet, TextEmbeddingCache, aggregate_text_embeddings


def make_prompts(**kwargs) -> PromptSet:
    base = dict(
        name="t",
        normal_states=["{}", "flawless {}"],
        anomalous_states=["damaged {}"],
        templates=["a photo of a {}.", "a {}."],
    )
    return PromptSet(**{**base, **kwargs})


def test_sentences_cross_states_and_templates():
    normal, anomalous = make_prompts().sentences("metal_nut")
    assert normal == [
        "a photo of a metal_nut.",
        "a metal_nut.",
        "a photo of a flawless metal_nut.",
        "a flawless metal_nut.",
    ]
    assert anomalous == ["a photo of a damaged metal_nut.", "a damaged metal_nut."]
    readable, _ = make_prompts(readable_class_names=True).sentences("metal_nut")
    assert readable[0] == "a photo of a metal nut."
    named, _ = make_prompts(class_name_overrides={"metal_nut": "hex nut"}).sentences("metal_nut")
    assert named[0] == "a photo of a hex nut."


def test_prompt_set_validation():
    with pytest.raises(ValueError, match="exactly one"):
        make_prompts(templates=["no slot"])
    with pytest.raises(ValueError, match="empty"):
        make_prompts(anomalous_states=[])


def test_text_cache_second_run_needs_no_text_forward(tiny_backbone, tmp_path):
    prompts = make_prompts()
    first = TextEmbeddingCache(tmp_path).classifier(tiny_backbone, prompts, "disc")
    passes = tiny_backbone.text_forward_passes
    second = TextEmbeddingCache(tmp_path).classifier(
        tiny_backbone, prompts, "disc"
    )  # a fresh process-like cache
    assert tiny_backbone.text_forward_passes == passes
    torch.testing.assert_close(first, second)
    TextEmbeddingCache(tmp_path).classifier(tiny_backbone, prompts, "nut")  # another class is encoded
    assert tiny_backbone.text_forward_passes == passes + 1
    TextEmbeddingCache(tmp_path).classifier(tiny_backbone, make_prompts(templates=["{}!"]), "disc")
    assert tiny_backbone.text_forward_passes == passes + 2  # another prompt set is another key


def test_aggregations():
    normal = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    anomalous = torch.tensor([[1.0, 1.0]])
    normalized = aggregate_text_embeddings(normal, anomalous, "normalized_mean")
    raw = aggregate_text_embeddings(normal, anomalous, "raw_mean")
    torch.testing.assert_close(normalized[0], torch.tensor([1.0, 1.0]) / 2**0.5)
    torch.testing.assert_close(raw[0], torch.tensor([3.0, 1.0]) / 10**0.5)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="unknown text aggregation"):
        aggregate_text_embeddings(normal, anomalous, "max")
