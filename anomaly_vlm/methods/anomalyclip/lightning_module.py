"""Lightning wrapper of AnomalyCLIP (``method=anomalyclip``): prompt training on auxiliary data, testing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.anomalyclip.official_weights import AnomalyCLIPRelease
from anomaly_vlm.methods.anomalyclip.torch_model import AnomalyCLIP, AnomalyCLIPFeatures
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.prompts.learnable import LearnablePromptSet


class AnomalyCLIPModule(AnomalyMethod):
    """Zero-shot anomaly classification and segmentation with object-agnostic learnable prompts.

    Paper: Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
    ICLR 2024 (official code: zqhang/AnomalyCLIP).

    Trains only the prompt parameters (context vectors and deep prompt tokens) with the glocal loss on an
    auxiliary dataset, then scores every category with the same two text features: the prompts are
    object-agnostic, so the category name never enters them. Zero-shot only: ``shots`` must be 0.

    Args:
        backbone: frozen CLIP.
        prompts: the learnable prompt set (``prompts=anomalyclip_learned``).
        shots: must be 0.
        lr, betas: Adam settings of the official training script (1e-3, (0.5, 0.999)).
        text_cache_dir: unused (the text features are learned), accepted for a uniform constructor.
        **model_options: the model's options (``method.layers=...``, ``method.dpam=...``), forwarded to
            :class:`~anomaly_vlm.methods.anomalyclip.torch_model.AnomalyCLIP`, which documents them.
    """

    method_name = "anomalyclip"
    #: ``ckpt_path=<the authors' release file>`` loads it (every key and shape checked).
    official_weights = AnomalyCLIPRelease()
    supports_few_shot = False
    trains_on_auxiliary_data = True
    block_options = {"layers": BlockOption(), "dpam_start": BlockOption(many=False)}
    tap_option = "layers"
    published_taps = "last"

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: LearnablePromptSet,
        shots: int = 0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        if not isinstance(prompts, LearnablePromptSet):
            raise ValueError(
                f"method=anomalyclip needs a learnable prompt set (prompts=anomalyclip_learned), "
                f"got prompts '{getattr(prompts, 'name', prompts)}' of type {type(prompts).__name__}"
            )
        model = AnomalyCLIP(backbone, prompts, **model_options)
        super().__init__(model, prompts, shots, text_cache_dir)
        self.lr = float(lr)
        self.betas = tuple(float(beta) for beta in betas)
        if len(self.betas) != 2:
            raise ValueError(f"method.betas={list(betas)} must hold two values")

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        # Object-agnostic prompts: the same two text features serve every category.
        self.model.scoring_text = self.model.text_features()

    # ----- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.model.scoring_text = None  # the prompts are about to change; never score with stale text

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        if batch.mask is None:
            raise ValueError(
                "AnomalyCLIP trains on pixel masks, but the auxiliary training batch has none "
                f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
            )
        features = AnomalyCLIPFeatures.from_dict(
            self.frozen_features(batch.image, batch.digest), self.model.layers
        )
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
        prompts = self.prompts
        return {
            **super().checkpoint_metadata(),
            "layers": list(self.model.layers),
            "dpam": self.model.dpam,
            "dpam_start": self.model.dpam_start,
            "global_ln_post": self.model.global_ln_post,
            "prompt_fingerprint": prompts.fingerprint(),
            "context_length": int(prompts.context_length),
            "deep_prompt_length": int(prompts.deep_prompt_length),
            "deep_prompt_depth": int(prompts.deep_prompt_depth),
        }
