"""PromptAD's prompt lists: learnable normal prompts, and anomaly prompts made from them.

PromptAD (Li et al., CVPR 2024) learns ``n_ctx`` context vectors per normal prompt. Its anomaly prompts are
built from the SAME normal context by *semantic concatenation*: the normal prompt ``[N..N] <class>.`` gets
an anomaly suffix, either a hand-written state (``[N..N] <class> with crack.``, from a generic list plus a
per-category list) or ``n_ctx_ab`` learnable anomaly vectors placed before the class name
(``[N..N] [A] <class>.``). The lists here are data (``conf/prompts/promptad.yaml``), as the official code
(FuNz-0/PromptAD, ``PromptAD/ad_prompts.py``) has them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Words whose token embeddings the learned vectors replace (single tokens in CLIP's vocabulary).
NORMAL_PLACEHOLDER = "N"
ANOMALY_PLACEHOLDER = "A"


@dataclass(frozen=True)
class PromptADPromptSet:
    """Sentences and parameter shapes of PromptAD's prompt learner.

    Args:
        name: registry key, equal to the config file name (``promptad``).
        anomaly_states: hand-written anomaly suffixes for every category, one ``{}`` for the class name.
        class_anomaly_states: extra hand-written suffixes per category (folder name), appended to
            ``anomaly_states`` as the official code does; a category without an entry uses the generic
            list only (the official code has entries for the MVTec AD and VisA categories only).
        context_length: learnable context vectors per normal prompt (official ``--n_ctx`` 4).
        anomaly_context_length: learnable anomaly vectors per learned anomaly suffix (``--n_ctx_ab`` 1).
        anomaly_prompts: learned anomaly suffixes (``--n_pro_ab`` 4).
        image_prompts: normal prompts of the image-level (CLS) prompt learner (``train_cls.py --n_pro`` 3).
        pixel_prompts: normal prompts of the pixel-level prompt learner (``train_seg.py --n_pro`` 1).
        init_std: standard deviation of the normal initialisation of the learnable vectors (0.02).
        readable_class_names: turn folder names into words (``metal_nut`` -> ``metal nut``).
        class_name_overrides: class name per category (the official ``class_mapping``).
    """

    name: str
    anomaly_states: Sequence[str]
    class_anomaly_states: dict[str, Sequence[str]] = field(default_factory=dict)
    context_length: int = 4
    anomaly_context_length: int = 1
    anomaly_prompts: int = 4
    image_prompts: int = 3
    pixel_prompts: int = 1
    init_std: float = 0.02
    readable_class_names: bool = False
    class_name_overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in (
            "context_length",
            "anomaly_context_length",
            "anomaly_prompts",
            "image_prompts",
            "pixel_prompts",
        ):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"prompt set '{self.name}': {key}={getattr(self, key)} must be >= 1")
        states = list(self.anomaly_states) + [
            s for extra in self.class_anomaly_states.values() for s in extra
        ]
        bad = [state for state in states if state.count("{}") != 1]
        if bad:
            raise ValueError(
                f"prompt set '{self.name}': each anomaly state needs exactly one '{{}}', got {bad}"
            )

    def class_name(self, category: str) -> str:
        """The words put into the prompts for a dataset category."""
        if category in self.class_name_overrides:
            return self.class_name_overrides[category]
        return category.replace("_", " ") if self.readable_class_names else category

    def states(self, category: str) -> list[str]:
        """Hand-written anomaly suffixes of a category: the generic list, then the category's own."""
        return list(self.anomaly_states) + list(self.class_anomaly_states.get(category, ()))

    def sentences(self, category: str, normal_prompts: int) -> tuple[list[str], list[str], list[str]]:
        """Tokenised sentences (learned vectors shown as placeholders) in the official order.

        Returns:
            ``normal`` (``normal_prompts`` copies of ``N..N <class>.``), ``handcrafted`` (for each state,
            ``normal_prompts`` copies of ``N..N <state>.``) and ``learned`` (``anomaly_prompts x
            normal_prompts`` copies of ``N..N A..A <class>.``).
        """
        name = self.class_name(category)
        normal_prefix = " ".join([NORMAL_PLACEHOLDER] * int(self.context_length))
        anomaly_prefix = " ".join([ANOMALY_PLACEHOLDER] * int(self.anomaly_context_length))
        normal = [f"{normal_prefix} {name}." for _ in range(normal_prompts)]
        handcrafted = [
            f"{normal_prefix} {state.format(name)}."
            for state in self.states(category)
            for _ in range(normal_prompts)
        ]
        learned = [
            f"{normal_prefix} {anomaly_prefix} {name}."
            for _ in range(int(self.anomaly_prompts))
            for _ in range(normal_prompts)
        ]
        return normal, handcrafted, learned

    def fingerprint(self) -> str:
        payload = json.dumps(
            [
                list(self.anomaly_states),
                sorted((key, list(value)) for key, value in self.class_anomaly_states.items()),
                self.context_length,
                self.anomaly_context_length,
                self.anomaly_prompts,
                self.image_prompts,
                self.pixel_prompts,
                self.init_std,
                self.readable_class_names,
                sorted(self.class_name_overrides.items()),
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
