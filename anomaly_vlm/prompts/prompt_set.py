"""Prompt sets: normal/anomalous state words crossed with sentence templates.

A prompt set is data (its lists live in ``conf/prompts/<name>.yaml``); this module only turns it
into sentences and, through the text cache, into text classifiers. ``ablation`` generates the
prompt-engineering ablations of a set from its own lists (``prompts.ablation=states_only``), so no
ablation needs a hand-written copy of a set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

#: ``prompts.ablation`` values: a 2x2 design over the state and template ensembles, and the class name.
#: ``full``: every state x every template (the set as written). ``states_only``: every state, one template.
#: ``templates_only``: every template, one state pair. ``one_pair``: one state pair in one template.
#: ``object_name``: the full set with the generic word "object" instead of the class name.
ABLATIONS = ("full", "states_only", "templates_only", "one_pair", "object_name")

#: The single template of ``states_only`` / ``one_pair`` when the set has it (CLIP's own zero-shot
#: template); otherwise the set's first template.
BASE_TEMPLATE = "a photo of a {}."

#: The class name of the ``object_name`` ablation (AnomalyCLIP's object-agnostic word).
GENERIC_NAME = "object"


@dataclass(frozen=True)
class PromptSet:
    """States x templates.

    Args:
        name: registry key, equal to the config file name (``two_prompt``, ``winclip_cpe``, ...).
        normal_states: phrases with one ``{}`` for the class name, e.g. ``"flawless {}"``.
        anomalous_states: likewise for the anomalous class.
        templates: sentences with one ``{}`` for a state phrase, e.g. ``"a photo of a {}."``.
        readable_class_names: turn folder names into words (``metal_nut`` -> ``metal nut``).
        class_name_overrides: explicit class name per category (wins over the folder name).
        ablation: one of :data:`ABLATIONS`; ``full`` (default) uses the lists as written. The single
            state pair of ``templates_only`` / ``one_pair`` is the first normal and the first anomalous
            state; the single template of ``states_only`` / ``one_pair`` is :data:`BASE_TEMPLATE` if the
            set has it, else its first template.
    """

    name: str
    normal_states: Sequence[str]
    anomalous_states: Sequence[str]
    templates: Sequence[str]
    readable_class_names: bool = False
    class_name_overrides: dict[str, str] = field(default_factory=dict)
    ablation: str = "full"

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(
                f"prompts.ablation={self.ablation} is not one of {', '.join(ABLATIONS)} "
                f"(prompt set '{self.name}')"
            )
        for kind, phrases in (
            ("normal_states", self.normal_states),
            ("anomalous_states", self.anomalous_states),
            ("templates", self.templates),
        ):
            if not phrases:
                raise ValueError(f"prompt set '{self.name}': {kind} is empty")
            bad = [phrase for phrase in phrases if phrase.count("{}") != 1]
            if bad:
                raise ValueError(
                    f"prompt set '{self.name}': each of {kind} needs exactly one '{{}}', got {bad}"
                )

    def class_name(self, category: str) -> str:
        """The words put into the prompts for a dataset category."""
        if self.ablation == "object_name":
            return GENERIC_NAME
        if category in self.class_name_overrides:
            return self.class_name_overrides[category]
        return category.replace("_", " ") if self.readable_class_names else category

    def base_template(self) -> str:
        """The one template of the single-template ablations."""
        return BASE_TEMPLATE if BASE_TEMPLATE in self.templates else self.templates[0]

    def lists(self) -> tuple[list[str], list[str], list[str]]:
        """Normal states, anomalous states and templates after the ablation."""
        normal, anomalous, templates = (
            list(self.normal_states),
            list(self.anomalous_states),
            list(self.templates),
        )
        if self.ablation in ("states_only", "one_pair"):
            templates = [self.base_template()]
        if self.ablation in ("templates_only", "one_pair"):
            normal, anomalous = normal[:1], anomalous[:1]
        return normal, anomalous, templates

    def sentences(self, category: str) -> tuple[list[str], list[str]]:
        """All normal and all anomalous sentences for a category (templates x states, after the ablation)."""
        name = self.class_name(category)
        normal, anomalous, templates = self.lists()

        def expand(states: Sequence[str]) -> list[str]:
            return [template.format(state.format(name)) for state in states for template in templates]

        return expand(normal), expand(anomalous)

    def fingerprint(self) -> str:
        """A hash of everything that changes the sentences (keys the text-embedding cache)."""
        fields = [
            self.normal_states,
            self.anomalous_states,
            self.templates,
            self.readable_class_names,
            sorted(self.class_name_overrides.items()),
        ]
        if self.ablation != "full":  # the full set keeps the key it had before ablations existed
            fields.append(self.ablation)
        payload = json.dumps(fields, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
