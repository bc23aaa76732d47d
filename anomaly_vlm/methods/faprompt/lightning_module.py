"""Lightning wrapper of FAPrompt (``method=faprompt``): prompt training on auxiliary data, testing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.faprompt.official_weights import FAPromptRelease
from anomaly_vlm.methods.faprompt.torch_model import FAPrompt
from anomaly_vlm.prompts.faprompt import FAPromptSet


class FAPromptModule(AnomalyMethod):
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
    supports_few_shot = False
    trains_on_auxiliary_data = True
    block_options = {"dpam_start": BlockOption(many=False)}
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
        if not isinstance(prompts, FAPromptSet):
            raise ValueError(
                f"method=faprompt needs its compound prompt set (prompts=faprompt), got prompts "
                f"'{getattr(prompts, 'name', prompts)}' of type {type(prompts).__name__}"
            )
        model = FAPrompt(backbone, prompts, **model_options)
        super().__init__(model, prompts, shots, text_cache_dir)
        self.lr = float(lr)
        self.betas = tuple(float(beta) for beta in betas)
        if len(self.betas) != 2:
            raise ValueError(f"method.betas={list(betas)} must hold two values")

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        # Class-agnostic prompts: the static text serves every category (the per-image part is per image).
        with torch.no_grad():
            self.model.static_text = self.model.prompt_learner()

    # ----- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.model.static_text = None  # the prompts are about to change; never score with stale text

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        if batch.mask is None:
            raise ValueError(
                "FAPrompt trains on pixel masks, but the auxiliary training batch has none "
                f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
            )
        features = self.frozen_features(batch.image, batch.digest)
        losses = self.model.loss_from_features(features, batch.mask, batch.label)
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            batch_size=len(batch),
        )
        return losses["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return torch.optim.Adam(parameters, lr=self.lr, betas=self.betas)

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
