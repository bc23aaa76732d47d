"""The Lightning wrapper shared by the methods that learn class-agnostic text on auxiliary data.

AnomalyCLIP and FAPrompt train prompts (and, for FAPrompt, a prior network) with Adam on an auxiliary
dataset that has pixel masks, then score every category with the same learned text. What they share lives
here: the optimiser settings and their check, the switch between training (no cached text: the prompts
change every step) and testing (the text computed once per category), the training step with its mask
check and loss logging. Each method states only its prompt set, its features and how its text is computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.prompts import PromptSet


def adam_betas(betas: Sequence[float]) -> tuple[float, ...]:
    """``method.betas`` as a tuple of floats; ValueError unless it holds the two values Adam takes."""
    values = tuple(float(beta) for beta in betas)
    if len(values) != 2:
        raise ValueError(f"method.betas={list(betas)} must hold two values")
    return values


def check_prompt_set(prompts: Any, kind: type, method: str, needs: str) -> None:
    """ValueError unless ``prompts`` is a ``kind``: ``method=<method> needs <needs>, got prompts ...``."""
    if not isinstance(prompts, kind):
        raise ValueError(
            f"method={method} needs {needs}, got prompts '{getattr(prompts, 'name', prompts)}' of type "
            f"{type(prompts).__name__}"
        )


def require_training_masks(batch: AnomalyBatch, method: str) -> None:
    """ValueError unless the auxiliary training batch has pixel masks (the losses are pixel losses)."""
    if batch.mask is None:
        raise ValueError(
            f"{method} trains on pixel masks, but the auxiliary training batch has none "
            f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
        )


class PromptTrainingMethod(AnomalyMethod):
    """A zero-shot method whose learned, class-agnostic text is trained with Adam on auxiliary data.

    The torch model provides ``loss_from_features(features, masks, labels)`` (a dict with ``"loss"``) and
    keeps the text it scores with in the attribute named by :attr:`text_attribute` (None: compute the text
    per batch, as during training).

    Args:
        model: the pure torch model.
        prompts: the method's prompt set (checked by the subclass).
        shots: must be 0.
        lr, betas: Adam settings.
        text_cache_dir: unused (the text features are learned), accepted for a uniform constructor.
    """

    supports_few_shot = False
    trains_on_auxiliary_data = True
    #: The model attribute that holds the text scoring test images (None while training).
    text_attribute: ClassVar[str] = "scoring_text"
    #: How the training error names the method ("AnomalyCLIP trains on pixel masks, ...").
    display_name: ClassVar[str] = "the method"

    def __init__(
        self,
        model: nn.Module,
        prompts: PromptSet,
        shots: int,
        lr: float,
        betas: Sequence[float],
        text_cache_dir: str | None,
    ) -> None:
        super().__init__(model, prompts, shots, text_cache_dir)
        self.lr = float(lr)
        self.betas = adam_betas(betas)

    def learned_text(self) -> Tensor:
        """The text features that score every category (computed from the current prompts)."""
        raise NotImplementedError

    def training_features(self, batch: AnomalyBatch) -> Any:
        """The features ``loss_from_features`` takes for a training batch (the frozen features)."""
        return self.frozen_features(batch.image, batch.digest)

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        # Class-agnostic prompts: the same text serves every category.
        setattr(self.model, self.text_attribute, self.learned_text())

    # ----- training --------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # The prompts are about to change; never score with stale text.
        setattr(self.model, self.text_attribute, None)

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        require_training_masks(batch, self.display_name)
        losses = self.model.loss_from_features(self.training_features(batch), batch.mask, batch.label)
        self.log_losses(losses, len(batch))
        return losses["loss"]

    def log_losses(self, losses: Mapping[str, Tensor], batch_size: int) -> None:
        """Log each loss term as ``train/<name>`` (detached, shown in the progress bar)."""
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            batch_size=batch_size,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return torch.optim.Adam(parameters, lr=self.lr, betas=self.betas)
