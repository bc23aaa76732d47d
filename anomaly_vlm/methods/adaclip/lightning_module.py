"""Lightning wrapper of AdaCLIP (``method=adaclip``): prompt training on auxiliary data, testing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.adaclip.official_weights import AdaCLIPRelease
from anomaly_vlm.methods.adaclip.torch_model import AdaCLIP, CategoryText
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.prompts import PromptSet


class AdaCLIPModule(AnomalyMethod):
    """Zero-shot anomaly classification and segmentation with hybrid learnable prompts.

    Paper: Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
    Detection", ECCV 2024 (official code: caoyunkang/AdaCLIP).

    Trains the static prompts, the dynamic-prompt generators and the patch / CLS projections on an
    auxiliary dataset, then scores each category with its class-aware prompt ensemble (``prompts=adaclip``),
    the dynamic prompts generated per test image. Zero-shot only: ``shots`` must be 0.

    Args:
        backbone: frozen CLIP.
        prompts: the fixed prompt ensemble (states x templates) that the learned tokens are inserted into.
        shots: must be 0.
        lr, betas, weight_decay: AdamW of the official trainer (0.01, (0.5, 0.999), torch's default 0.01).
        text_cache_dir: unused (the text features depend on each image), accepted for a uniform constructor.
        **model_options: the model's options (``method.layers=...``, ``method.use_hsf=...``), forwarded
            to :class:`~anomaly_vlm.methods.adaclip.torch_model.AdaCLIP`, which documents them.
    """

    method_name = "adaclip"
    #: ``ckpt_path=<the authors' release file>`` loads it (every key and shape checked).
    official_weights = AdaCLIPRelease()
    supports_few_shot = False
    trains_on_auxiliary_data = True
    block_options = {
        "layers": BlockOption(),
        "prompt_depth": BlockOption(many=False, encoders=("vision", "text")),
    }
    tap_option = "layers"

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        lr: float = 0.01,
        betas: Sequence[float] = (0.5, 0.999),
        weight_decay: float = 0.01,
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        if not isinstance(prompts, PromptSet):
            raise ValueError(
                "method=adaclip needs a fixed prompt ensemble to insert its learned tokens into "
                f"(prompts=adaclip), got prompts '{getattr(prompts, 'name', prompts)}' of type "
                f"{type(prompts).__name__}"
            )
        model = AdaCLIP(backbone, **model_options)
        super().__init__(model, prompts, shots, text_cache_dir)
        self.lr = float(lr)
        self.betas = tuple(float(beta) for beta in betas)
        if len(self.betas) != 2:
            raise ValueError(f"method.betas={list(betas)} must hold two values")
        self.weight_decay = float(weight_decay)
        self._texts: dict[str, CategoryText] = {}

    def category_text(self, category: str) -> CategoryText:
        """The tokenised prompt ensemble of ``category`` (built once)."""
        if category not in self._texts:
            normal, anomalous = self.prompts.sentences(category)
            ids = self.backbone.tokenize(normal + anomalous).to(self.device)
            self._texts[category] = CategoryText(ids, len(normal))
        return self._texts[category]

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        self.model.set_category(self.category_text(category))

    # ----- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.model.set_category(None)

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        if batch.mask is None:
            raise ValueError(
                "AdaCLIP trains on pixel masks, but the auxiliary training batch has none "
                f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
            )
        features = self.frozen_features(batch.image, batch.digest)
        texts = [self.category_text(category) for category in batch.category]
        losses = self.model.loss(features, batch.mask, batch.label, texts)
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            batch_size=len(batch),
        )
        return losses["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return torch.optim.AdamW(parameters, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

    # ----- checkpoints -----------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().checkpoint_metadata(),
            "layers": list(model.layers),
            "prompt_length": model.prompt_length,
            "prompt_depth": model.prompt_depth,
            "prompt_kinds": [model.static_prompts, model.dynamic_prompts],
            "prompt_branches": [model.visual_prompts, model.text_prompts],
        }
