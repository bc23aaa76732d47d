"""FAPrompt's compound abnormality prompts: the sentences and the shapes of their learnable vectors.

FAPrompt (Zhu et al., ICCV 2025) builds on AnomalyCLIP's object-agnostic prompts. Its normal prompt is
``[N x 5] object.``; its ``10`` abnormal prompts are *compound*: each one reuses the normal context and adds
its own ``2`` learnable abnormality tokens before a fixed word, ``[N x 5] [A x 2] damaged object.``. Deep
prompt tokens inside the text encoder are AnomalyCLIP's. The values here are data
(``conf/prompts/faprompt.yaml``), as the official code (mala-lab/FAPrompt, ``FAPrompt.py``) hard-codes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

#: Words whose token embeddings the learned vectors replace (single tokens in CLIP's vocabulary), as the
#: official code writes its prompts.
NORMAL_PLACEHOLDER = "N"
ABNORMAL_PLACEHOLDER = "A"


@dataclass(frozen=True)
class FAPromptSet:
    """Sentences and parameter shapes of FAPrompt's compound prompt learner.

    Args:
        name: registry key, equal to the config file name (``faprompt``).
        class_name: the class word of every prompt (``object``: the prompts are class-agnostic).
        abnormal_word: the fixed word of the abnormal prompts (``damaged``).
        normal_context_length: learnable normal context vectors, shared by all prompts (5).
        abnormal_context_length: learnable abnormality tokens per abnormal prompt (2).
        abnormal_prompts: number of compound abnormal prompts (10).
        deep_prompt_length: learnable tokens overwriting positions ``1 .. n`` in the deeper text blocks (4).
        deep_prompt_depth: deep tokens enter text blocks ``2 .. deep_prompt_depth`` (official ``--depth`` 9).
        init_std: standard deviation of the normal initialisation of every learnable vector (0.02).
        deep_prompt_fp16: round the deep tokens through float16 where they are inserted, as the official
            text encoder does (its gradient too); False keeps them float32.
    """

    name: str
    class_name: str = "object"
    abnormal_word: str = "damaged"
    normal_context_length: int = 5
    abnormal_context_length: int = 2
    abnormal_prompts: int = 10
    deep_prompt_length: int = 4
    deep_prompt_depth: int = 9
    init_std: float = 0.02
    deep_prompt_fp16: bool = True

    def __post_init__(self) -> None:
        for key in (
            "normal_context_length",
            "abnormal_context_length",
            "abnormal_prompts",
            "deep_prompt_depth",
        ):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"prompt set '{self.name}': {key}={getattr(self, key)} must be >= 1")
        if self.deep_prompt_depth > 1 and self.deep_prompt_length < 1:
            raise ValueError(
                f"prompt set '{self.name}': deep_prompt_depth={self.deep_prompt_depth} needs "
                "deep_prompt_length >= 1"
            )
        if self.deep_prompt_depth > 1 and self.deep_prompt_length > self.normal_context_length:
            # Overwriting past the normal context would replace the normal sentence's own words.
            raise ValueError(
                f"prompt set '{self.name}': deep_prompt_length={self.deep_prompt_length} exceeds "
                f"normal_context_length={self.normal_context_length}"
            )
        if not self.class_name.strip():
            raise ValueError(f"prompt set '{self.name}': class_name must be non-empty")

    def sentences(self, category: str | None = None) -> tuple[list[str], list[str]]:
        """The normal sentence and the abnormal sentences, learned vectors shown by their placeholders;
        the same for every category."""
        normal = " ".join([NORMAL_PLACEHOLDER] * self.normal_context_length)
        abnormal = " ".join([ABNORMAL_PLACEHOLDER] * self.abnormal_context_length)
        name = self.class_name.replace("_", " ")
        words = f"{self.abnormal_word} {name}" if self.abnormal_word.strip() else name
        return [f"{normal} {name}."], [f"{normal} {abnormal} {words}."] * self.abnormal_prompts

    def fingerprint(self) -> str:
        payload = json.dumps(
            [
                self.class_name,
                self.abnormal_word,
                self.normal_context_length,
                self.abnormal_context_length,
                self.abnormal_prompts,
                self.deep_prompt_length,
                self.deep_prompt_depth,
                self.init_std,
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
