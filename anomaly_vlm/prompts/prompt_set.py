"""Prompt sets: normal/anomalous state words crossed with sentence templates.

A prompt set is data (its lists live in ``conf/prompts/<name>.yaml``); this module only turns it
into sentences and, through the text cache, into text classifiers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field


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
    """

    name: str
    normal_states: Sequence[str]
    anomalous_states: Sequence[str]
    templates: Sequence[str]
    readable_class_names: bool = False
    class_name_overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
        if category in self.class_name_overrides:
            return self.class_name_overrides[category]
        return category.replace("_", " ") if self.readable_class_names else category

    def sentences(self, category: str) -> tuple[list[str], list[str]]:
        """All normal and all anomalous sentences for a category (templates x states)."""
        name = self.class_name(category)

        def expand(states: Sequence[str]) -> list[str]:
            return [template.format(state.format(name)) for state in states for template in self.templates]

        return expand(self.normal_states), expand(self.anomalous_states)

    def fingerprint(self) -> str:
        """A hash of everything that changes the sentences (keys the text-embedding cache)."""
        payload = json.dumps(
            [
                self.normal_states,
                self.anomalous_states,
                self.templates,
                self.readable_class_names,
                sorted(self.class_name_overrides.items()),
            ],
            default=list,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
