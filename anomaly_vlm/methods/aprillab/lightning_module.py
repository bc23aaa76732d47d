"""Lightning wrapper of APRIL-GAN (``method=aprillab``): training loop, checkpoint metadata and the
set-level few-shot image score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.aprillab.official_weights import AprilGANRelease
from anomaly_vlm.methods.aprillab.torch_model import AprilGAN
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.prompts import PromptSet


class AprilGANModule(AnomalyMethod):
    """APRIL-GAN / "AprilLab framework": trained per-stage linear projections, zero- and few-shot.

    Paper: Chen et al., "APRIL-GAN: A Zero-/Few-Shot Anomaly Classification and Segmentation Method for
    CVPR 2023 VAND Workshop Challenge Tracks 1&2", arXiv 2305.17382.

    Training (cross-dataset protocol): per stage focal(γ) on the 2-channel softmax plus dice on the
    abnormal channel, summed over stages; Adam on the projections only. Ground-truth masks are
    binarised at 0.5 as in the reference code.

    Image scores: zero-shot, the text probability of the global embedding. Few-shot, as in the
    reference test script, ``0.5 * (text probability + minmax(max of the final map))`` where the min-max
    runs over the whole test set of the category, so the torch model's ``score`` returns the text
    probability with both parts as extras, and its ``postprocess_set``, which the evaluation path
    applies once the category is complete, combines them. A category whose map maxima are all equal
    gets a zero normalised term (the reference code would divide by zero).

    Args:
        backbone: frozen CLIP (published: ViT-L-14-336, OpenAI weights, plain GELU, 518 px).
        prompts: prompt set (published: ``aprilgan``).
        shots: normal reference images per category (0 = zero-shot).
        stages: 1-based blocks to project; None scales the published 6/12/18/24 to the backbone depth.
        few_shot_stages: blocks of the few-shot memory; None = ``stages``.
        logit_scale: CLIP's fixed 100.
        lr: Adam learning rate.
        betas: Adam betas.
        focal_gamma: focusing parameter of the focal loss.
        text_aggregation: how sentence embeddings are averaged (published: ``normalized_mean``).
        text_cache_dir: disk cache of text embeddings.
    """

    method_name = "aprillab"
    #: ``ckpt_path=<the authors' release file>`` loads it (every key and shape checked).
    official_weights = AprilGANRelease()
    supports_few_shot = True
    trains_on_auxiliary_data = True
    block_options = {"stages": BlockOption(), "few_shot_stages": BlockOption()}
    tap_option = "stages"

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        stages: Sequence[int] | None = None,
        few_shot_stages: Sequence[int] | None = None,
        logit_scale: float = 100.0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        focal_gamma: float = 2.0,
        text_aggregation: str = "normalized_mean",
        text_cache_dir: str | None = None,
    ) -> None:
        model = AprilGAN(backbone, stages, few_shot_stages, logit_scale)
        super().__init__(model, prompts, shots, text_cache_dir)
        self.lr = float(lr)
        self.betas = tuple(float(beta) for beta in betas)
        self.focal_gamma = float(focal_gamma)
        self.text_aggregation = text_aggregation
        self._train_text: dict[str, Tensor] = {}

    @property
    def stages(self) -> tuple[int, ...]:
        return self.model.stages

    def _classifier(self, category: str) -> Tensor:
        return self.text_cache.classifier(self.backbone, self.prompts, category, self.text_aggregation)

    # ----- training -----------------------------------------------------------------------------
    def _text_for(self, categories: list[str]) -> Tensor:
        """``[B, 2, D]`` text classifier of each image's own category (built once per category)."""
        for category in set(categories) - set(self._train_text):
            self._train_text[category] = self._classifier(category).to(self.device)
        return torch.stack([self._train_text[category] for category in categories])

    def segmentation_loss(self, batch: AnomalyBatch) -> tuple[Tensor, list[Tensor]]:
        """Total loss and the per-stage losses of a training batch."""
        if batch.mask is None:
            raise ValueError("APRIL-GAN trains on masks; the training batch has none (train_data=...)")
        images = batch.image
        layer_tokens = self.model.layer_tokens(self.frozen_features(images, batch.digest))
        text = self._text_for(list(batch.category))
        probabilities = self.model.stage_probabilities(layer_tokens, text, tuple(images.shape[-2:]))
        target = (batch.mask > 0.5).float()
        per_stage = [
            focal_loss(stage, target, gamma=self.focal_gamma) + dice_loss(stage[:, 1], target)
            for stage in probabilities
        ]
        return torch.stack(per_stage).sum(), per_stage

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        loss, per_stage = self.segmentation_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch))
        for stage, value in zip(self.stages, per_stage, strict=True):
            self.log(f"train/loss_block{stage}", value, on_epoch=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.projections.parameters(), lr=self.lr, betas=self.betas)

    # ----- testing ------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        self.model.set_text_classifier(self._classifier(category).to(self.device))
        has_references = reference_images is not None and len(reference_images) > 0
        # Chunks of 8, as the memory was always built: the features are the same, the peak memory lower.
        features = self.reference_features(reference_images, batch_size=8) if has_references else None
        self.model.set_memory_features(features)

    # ----- checkpoints ----------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        """Adds the stages: projections trained for other blocks do not transfer."""
        return {**super().checkpoint_metadata(), "stages": list(self.stages)}
