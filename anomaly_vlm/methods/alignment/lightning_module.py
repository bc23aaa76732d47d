"""Lightning wrapper of the alignment strategies (``method=alignment``): one training loop for every strategy
with trainable parts, testing for all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.alignment.torch_model import TRAINED_PARTS, AlignmentModel, parse_alignment
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.hybrid_prompts import CategoryText
from anomaly_vlm.prompts import PromptSet

#: The category whose prompts score training images of fixed-text strategies: the training images come from
#: several categories and one text pair serves them all (the learned prompts are object-agnostic too).
TRAINING_CATEGORY = "object"


class AlignmentModule(AnomalyMethod):
    """One backbone, taps, prompt set, scoring rule and training budget; only ``method.alignment`` changes.

    Composed of the parts the published methods use (WinCLIP's windows, AnomalyCLIP's V-V stream and
    learned text prompts, APRIL-GAN's per-tap projections, AdaCLIP's hybrid prompts and CLS projection); see
    :mod:`anomaly_vlm.methods.alignment.torch_model`. A strategy without trainable parts is only tested.

    Paper: none of its own; a controlled comparison of the alignments of WinCLIP (CVPR 2023), APRIL-GAN
    (arXiv 2305.17382), AnomalyCLIP (ICLR 2024) and AdaCLIP (ECCV 2024).

    Args:
        backbone: frozen CLIP.
        prompts: the prompt set of the fixed-text strategies (the learned prompts start from
            ``object.`` / ``damaged object.``).
        shots: must be 0 (zero-shot).
        lr, betas: Adam settings for every trainable part (AnomalyCLIP's 1e-3, (0.5, 0.999)).
        text_aggregation: how the prompt set's sentence embeddings are averaged.
        text_cache_dir: disk cache of text embeddings.
        **model_options: :class:`~anomaly_vlm.methods.alignment.torch_model.AlignmentModel`'s options
            (``method.alignment``, ``method.layers``, ...).
    """

    method_name = "alignment"
    supports_few_shot = False
    trains_on_auxiliary_data = True
    block_options = {
        "layers": BlockOption(),
        "dpam_start": BlockOption(many=False),
        "deep_prompt_depth": BlockOption(many=False, encoders=("text",)),
        "visual_prompt_depth": BlockOption(many=False),
    }

    @classmethod
    def check_options(cls, options: Any) -> None:
        """Refuse an unknown or impossible ``method.alignment`` before weights load (ValueError)."""
        parse_alignment(str(options.get("alignment", "none")))

    @classmethod
    def trains_with(cls, options: Any) -> bool:
        """Whether ``method.alignment`` has trained parts: the training-free strategies (none, windows,
        surgery) need no ``train_data``."""
        try:
            parts = parse_alignment(str(options.get("alignment", "none")))
        except ValueError:
            return True  # check_options reports the bad value
        return bool(parts & TRAINED_PARTS)

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        text_aggregation: str = "normalized_mean",
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        super().__init__(AlignmentModel(backbone, **model_options), prompts, shots, text_cache_dir)
        self.lr = float(lr)
        self.betas = tuple(float(beta) for beta in betas)
        if len(self.betas) != 2:
            raise ValueError(f"method.betas={list(betas)} must hold two values")
        self.text_aggregation = str(text_aggregation)

    def _fixed_text(self, category: str) -> None:
        classifier = self.text_cache.classifier(self.backbone, self.prompts, category, self.text_aggregation)
        self.model.set_text_classifier(classifier)

    def _prompted_text(self, category: str) -> None:
        """Hybrid prompts: the category's sentences of the prompt set, tokenised (their learned tokens are
        inserted per image)."""
        normal, anomalous = self.prompts.sentences(category)
        ids = self.backbone.tokenize(normal + anomalous).to(self.device)
        self.model.set_category(CategoryText(ids, len(normal)))

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        self.model.scoring_text = None
        if self.model.hybrid is not None:
            self._prompted_text(category)
        elif self.model.learns_text:
            with torch.no_grad():
                self.model.scoring_text = self.model.text_features()
        else:
            self._fixed_text(category)

    # ----- training --------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.model.scoring_text = None  # the prompts are about to change; never score with stale text
        if self.model.hybrid is not None:
            self._prompted_text(TRAINING_CATEGORY)
        elif not self.model.learns_text:
            self._fixed_text(TRAINING_CATEGORY)

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        if batch.mask is None:
            raise ValueError(
                "method=alignment trains on pixel masks, but the auxiliary training batch has none "
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
        return {
            **super().checkpoint_metadata(),
            "alignment": self.model.alignment,
            "layers": list(self.model.layers),
        }
