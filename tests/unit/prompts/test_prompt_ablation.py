"""Prompt ablations generated from a prompt set (``prompts.ablation``): the sentence lists they make."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.prompts.prompt_set import ABLATIONS

CONF = Path(__file__).resolve().parents[3] / "conf" / "prompts"


def make(ablation: str = "full", **kwargs) -> PromptSet:
    base = dict(
        name="t",
        normal_states=["{}", "flawless {}"],
        anomalous_states=["damaged {}", "{} with defect"],
        templates=["a cropped photo of the {}.", "a photo of a {}.", "a {} in the scene."],
        class_name_overrides={"metal_nut": "hex nut"},
    )
    return PromptSet(**{**base, **kwargs}, ablation=ablation)


def test_full_is_every_state_in_every_template():
    normal, anomalous = make("full").sentences("metal_nut")
    assert len(normal) == 2 * 3 and len(anomalous) == 2 * 3
    assert normal[:3] == [
        "a cropped photo of the hex nut.",
        "a photo of a hex nut.",
        "a hex nut in the scene.",
    ]
    assert anomalous[-1] == "a hex nut with defect in the scene."


def test_states_only_keeps_every_state_in_one_template():
    normal, anomalous = make("states_only").sentences("metal_nut")
    # the set has CLIP's "a photo of a {}." so that is the one template, not the first of the list
    assert normal == ["a photo of a hex nut.", "a photo of a flawless hex nut."]
    assert anomalous == ["a photo of a damaged hex nut.", "a photo of a hex nut with defect."]


def test_states_only_without_the_base_template_takes_the_first():
    normal, _ = make("states_only", templates=["this is a {}.", "a {}!"]).sentences("bottle")
    assert normal == ["this is a bottle.", "this is a flawless bottle."]


def test_templates_only_keeps_every_template_with_the_first_state_pair():
    normal, anomalous = make("templates_only").sentences("bottle")
    assert normal == ["a cropped photo of the bottle.", "a photo of a bottle.", "a bottle in the scene."]
    assert anomalous == [
        "a cropped photo of the damaged bottle.",
        "a photo of a damaged bottle.",
        "a damaged bottle in the scene.",
    ]


def test_one_pair_is_one_sentence_per_state():
    assert make("one_pair").sentences("bottle") == (
        ["a photo of a bottle."],
        ["a photo of a damaged bottle."],
    )


def test_object_name_replaces_the_class_name_and_its_overrides():
    normal, anomalous = make("object_name").sentences("metal_nut")
    full_normal, full_anomalous = make("full").sentences("metal_nut")
    assert normal == [s.replace("hex nut", "object") for s in full_normal]
    assert anomalous == [s.replace("hex nut", "object") for s in full_anomalous]
    assert make("object_name").class_name("bottle") == "object"


def test_every_ablation_has_its_own_text_cache_key_and_full_keeps_the_old_one():
    fingerprints = {ablation: make(ablation).fingerprint() for ablation in ABLATIONS}
    assert len(set(fingerprints.values())) == len(ABLATIONS)
    legacy = PromptSet(
        name="t",
        normal_states=["{}", "flawless {}"],
        anomalous_states=["damaged {}", "{} with defect"],
        templates=["a cropped photo of the {}.", "a photo of a {}.", "a {} in the scene."],
        class_name_overrides={"metal_nut": "hex nut"},
    )
    assert legacy.fingerprint() == fingerprints["full"]


def test_unknown_ablation_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"prompts.ablation=states.*full, states_only"):
        make("states")


@pytest.mark.parametrize("name", ["winclip_cpe", "aprilgan"])
def test_published_sets_generate_the_ablations_from_their_own_lists(name):
    spec = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    spec.pop("_target_")
    assert spec["ablation"] == "full"
    sizes = {}
    for ablation in ABLATIONS:
        normal, anomalous = PromptSet(**{**spec, "ablation": ablation}).sentences("bottle")
        sizes[ablation] = (len(normal), len(anomalous))
    states, templates = (len(spec["normal_states"]), len(spec["anomalous_states"])), len(spec["templates"])
    assert sizes["full"] == (states[0] * templates, states[1] * templates)
    assert sizes["states_only"] == states
    assert sizes["templates_only"] == (templates, templates)
    assert sizes["one_pair"] == (1, 1)
    assert sizes["object_name"] == sizes["full"]
    assert PromptSet(**{**spec, "ablation": "one_pair"}).sentences("bottle") == (
        ["a photo of a bottle."],
        ["a photo of a damaged bottle."],
    )
