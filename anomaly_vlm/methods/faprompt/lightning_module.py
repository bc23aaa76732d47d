"""Lightning wrapper of FAPrompt (``method=faprompt``): prompt training on auxiliary data, testing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.base import BlockOption
from anomaly_vlm.methods.faprompt.official_weights import FAPromptRelease
from anomaly_vlm.methods.faprompt.torch_model import FAPrompt
from anomaly_vlm.methods.prompt_training import PromptTrainingMethod, check_prompt_set
from anomaly_vlm.prompts.faprompt import FAPromptSet


class FAPromptModule(PromptTrainingMethod):
    """Zero-shot anomaly classification and segmentation with fine-grained abnormality prompts.

    Paper: Zhu et al., "Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection",
    ICCV 2025 (official code: mala-lab/FAPrompt).

    Trains the compound abnormality prompts, the deep text prompts and the data-dependent prior network on
    an auxiliary dataset, then scores every category with the same class-agnostic prompts, the abnormality
    tokens shifted per test image by the prior. Zero-shot only: ``shots`` must be 0.

    Args:
        backbone: frozen CLIP.
        prompts: the compound prompt set (``prompts=faprompt``).
        shots: must be 0.
        lr, betas: Adam settings of the official training script (1e-3, (0.5, 0.999)).
        text_cache_dir: unused (the text features are learned), accepted for a uniform constructor.
        **model_options: the model's options (``method.prior_patches=...``), forwarded to
            :class:`~anomaly_vlm.methods.faprompt.torch_model.FAPrompt`, which documents them.
    """

    method_name = "faprompt"
    block_options = {"dpam_start": BlockOption(many=False)}
    text_attribute = "static_text"
    display_name = "FAPrompt"
    #: ``ckpt_path=<a file saved by the official train.py>`` loads (the authors released none).
    official_weights = FAPromptRelease()

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: FAPromptSet,
        shots: int = 0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        check_prompt_set(prompts, FAPromptSet, "faprompt", "its compound prompt set (prompts=faprompt)")
        model = FAPrompt(backbone, prompts, **model_options)
        super().__init__(model, prompts, shots, lr, betas, text_cache_dir)

    def learned_text(self) -> Tensor:
        # The static text (the per-image part of the prompts is added per image when scoring).
        with torch.no_grad():
            return self.model.prompt_learner()

    # ----- checkpoints -----------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().checkpoint_metadata(),
            "dpam": model.dpam,
            "dpam_start": model.dpam_start,
            "prior_tokens": model.prompt_learner.prior_tokens,
            "prompt_fingerprint": self.prompts.fingerprint(),
        }
