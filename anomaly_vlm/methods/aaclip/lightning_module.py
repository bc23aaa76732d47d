"""Lightning wrapper of AA-CLIP (``method=aaclip``): two-stage adapter training on auxiliary data, testing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.aaclip.official_weights import AAClipRelease, with_text_file
from anomaly_vlm.methods.aaclip.torch_model import AAClip, augment
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.prompts import PromptSet


class AAClipModule(AnomalyMethod):
    """Zero-shot anomaly classification and segmentation with anomaly-aware residual adapters.

    Paper: Ma et al., "AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP", CVPR 2025
    (official code: Mwxinnn/AA-CLIP).

    Training runs the official two stages in one Lightning fit of ``trainer.max_epochs`` epochs:

    1. the first ``text_epochs`` epochs train the text adapters and the text head (Adam ``text_lr``,
       batches of ``text_batch_size`` images: consecutive loader batches are joined, so any
       ``datamodule.train_batch_size`` gives the same batches of the same shuffled order);
    2. the remaining epochs train the image adapters and projections (Adam ``image_lr``, loader batches of
       ``datamodule.train_batch_size``, the learning rate halved after ``lr_milestones`` steps of this
       stage), against text features computed once with the trained text side.

    The official test script evaluates the checkpoint of every epoch on the test data; this trains for the
    published schedule and tests the last one. Zero-shot only: ``shots`` must be 0.

    Args:
        backbone: frozen CLIP.
        prompts: the prompt ensemble (``prompts=aaclip``: 3 normal and 5 abnormal states, 2 templates).
        shots: must be 0.
        text_epochs: epochs of stage 1 (5); stage 2 gets ``trainer.max_epochs - text_epochs`` (20).
        text_lr, image_lr: Adam learning rates of the two stages (1e-5, 5e-4).
        betas: Adam betas of both stages ((0.5, 0.999)).
        text_batch_size: images per stage-1 step (16).
        lr_milestones, lr_gamma: stage-2 ``MultiStepLR`` stepped per step ([16000, 32000], 0.5).
        augment: the official training augmentation (:func:`~anomaly_vlm.methods.aaclip.torch_model.augment`):
            rotation, translation and flips in both stages, colour jitter in the image stage.
        augment_seed: with the epoch and batch, the seed of the augmentation (the official one draws
            from the global generator in its loader workers).
        text_cache_dir: unused (the text features are learned), accepted for a uniform constructor.
        **model_options: options of :class:`~anomaly_vlm.methods.aaclip.torch_model.AAClip`.
    """

    method_name = "aaclip"
    supports_few_shot = False
    trains_on_auxiliary_data = True
    block_options = {
        "levels": BlockOption(),
        "image_adapt_until": BlockOption(many=False),
        "text_adapt_until": BlockOption(many=False, encoders=("text",)),
        "surgery_start": BlockOption(many=False),
    }
    tap_option = "levels"
    #: ``ckpt_path=<save_path>/image_adapter_<epoch>.pth`` of the official training (none are released).
    official_weights = AAClipRelease()

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        text_epochs: int = 5,
        text_lr: float = 1e-5,
        image_lr: float = 5e-4,
        betas: Sequence[float] = (0.5, 0.999),
        text_batch_size: int = 16,
        lr_milestones: Sequence[int] = (16000, 32000),
        lr_gamma: float = 0.5,
        augment: bool = True,
        augment_seed: int = 0,
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        if not isinstance(prompts, PromptSet):
            raise ValueError(
                "method=aaclip needs a fixed prompt ensemble to encode through its adapters "
                "(prompts=aaclip), "
                f"got prompts '{getattr(prompts, 'name', prompts)}' of type {type(prompts).__name__}"
            )
        model = AAClip(backbone, **model_options)
        super().__init__(model, prompts, shots, text_cache_dir)
        if int(text_epochs) < 0:
            raise ValueError(f"method.text_epochs={text_epochs} must be 0 or more")
        if int(text_batch_size) < 1:
            raise ValueError(f"method.text_batch_size={text_batch_size} must be at least 1")
        self.text_epochs = int(text_epochs)
        self.text_lr = float(text_lr)
        self.image_lr = float(image_lr)
        self.betas = tuple(float(beta) for beta in betas)
        if len(self.betas) != 2:
            raise ValueError(f"method.betas={list(betas)} must hold two values")
        self.text_batch_size = int(text_batch_size)
        self.lr_milestones = [int(step) for step in lr_milestones]
        self.lr_gamma = float(lr_gamma)
        self.augment = bool(augment)
        self.augment_seed = int(augment_seed)
        # Two optimisers stepped by stage (and stage-1 batches joined from loader batches).
        self.automatic_optimization = False
        self._tokens: dict[str, tuple[Tensor, int]] = {}
        self._frozen_texts: dict[str, Tensor] = {}
        self._pending: list[AnomalyBatch] = []

    # ----- text -------------------------------------------------------------------------------------
    def category_tokens(self, category: str) -> tuple[Tensor, int]:
        """Token ids ``[S, L]`` of the category's sentences (normal first) and the number of normal ones."""
        if category not in self._tokens:
            normal, abnormal = self.prompts.sentences(category)
            self._tokens[category] = (self.backbone.tokenize(normal + abnormal), len(normal))
        ids, count = self._tokens[category]
        return ids.to(self.device), count

    def category_text(self, category: str) -> Tensor:
        """``[2, D]`` text features of ``category`` through the current text adapters (with grad)."""
        return self.model.encode_text(*self.category_tokens(category))

    def texts_of(self, categories: Sequence[str], frozen: bool) -> Tensor:
        """``[B, 2, D]``: each image's category text, encoded once per category of the batch."""
        encoded: dict[str, Tensor] = {}
        for category in dict.fromkeys(categories):
            if frozen:
                if category not in self._frozen_texts:
                    with torch.no_grad():
                        self._frozen_texts[category] = self.category_text(category).detach()
                encoded[category] = self._frozen_texts[category]
            else:
                encoded[category] = self.category_text(category)
        return torch.stack([encoded[category] for category in categories])

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        with torch.no_grad():
            self.model.set_text(self.category_text(category))

    # ----- training ----------------------------------------------------------------------------------
    def stage(self, epoch: int | None = None) -> str:
        """``text`` during the first ``text_epochs`` epochs, ``image`` after."""
        epoch = self.current_epoch if epoch is None else epoch
        return "text" if epoch < self.text_epochs else "image"

    def on_train_start(self) -> None:
        self.model.set_text(None)
        self._frozen_texts.clear()
        self._pending.clear()
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max_epochs <= self.text_epochs:
            raise ValueError(
                f"trainer.max_epochs={max_epochs} leaves no image-adapter epochs after method.text_epochs="
                f"{self.text_epochs}: AA-CLIP trains text_epochs + image epochs (published 5 + 20: "
                "trainer.max_epochs=25)"
            )

    def on_train_epoch_start(self) -> None:
        # The text side is final once stage 2 begins: its features are encoded afresh, then kept.
        if self.stage() == "image":
            self._pending.clear()
        else:
            self._frozen_texts.clear()

    def _check_masks(self, batch: AnomalyBatch) -> None:
        if batch.mask is None:
            raise ValueError(
                "AA-CLIP trains on pixel masks, but the auxiliary training batch has none "
                f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
            )

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor | None:
        self._check_masks(batch)
        if self.stage() == "text":
            return self._text_step(batch, batch_idx)
        return self._image_step(batch, batch_idx)

    def training_inputs(self, batch: AnomalyBatch, batch_idx: int, color: bool) -> tuple[Tensor, Tensor]:
        """The batch's images (``[0, 1]``) and masks, augmented when ``augment`` is on."""
        if not self.augment:
            return batch.image, batch.mask
        generator = torch.Generator().manual_seed(
            self.augment_seed * 1_000_003 + self.current_epoch * 100_003 + batch_idx
        )
        images, masks = augment(
            batch.image.cpu(), batch.mask.cpu(), generator, color, self.backbone.pixel_mean.flatten().tolist()
        )
        return images.to(batch.image.device), masks.to(batch.mask.device)

    def _text_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor | None:
        images, masks = self.training_inputs(batch, batch_idx, color=False)
        self._pending.append(_Held(images, masks, list(batch.category)))
        held = sum(len(part) for part in self._pending)
        last = batch_idx + 1 >= self.trainer.num_training_batches
        loss = None
        while held >= self.text_batch_size or (last and held):
            images = torch.cat([part.image for part in self._pending])
            masks = torch.cat([part.mask for part in self._pending])
            categories = [category for part in self._pending for category in part.category]
            count = min(self.text_batch_size, held)
            rest = (images[count:], masks[count:], categories[count:])
            loss = self._text_update(images[:count], masks[:count], categories[:count])
            self._pending = [_Held(*rest)] if len(rest[0]) else []
            held -= count
        return loss

    def _text_update(self, images: Tensor, masks: Tensor, categories: list[str]) -> Tensor:
        optimizer = self.optimizers()[0]
        features = self.frozen_features(images)
        text = self.texts_of(categories, frozen=False)
        losses = self.model.text_stage_loss(features["pixels"], masks, text)
        optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        optimizer.step()
        self._log(losses, "text", len(images))
        return losses["loss"].detach()

    def _image_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()[1]
        scheduler = self.lr_schedulers()
        images, masks = self.training_inputs(batch, batch_idx, color=True)
        features = self.frozen_features(images, None if self.augment else batch.digest)
        text = self.texts_of(batch.category, frozen=True)
        losses = self.model.image_stage_loss(features["pixels"], masks, batch.label, text)
        optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        optimizer.step()
        scheduler.step()
        self._log(losses, "image", len(batch))
        return losses["loss"].detach()

    def _log(self, losses: dict[str, Tensor], stage: str, size: int) -> None:
        self.log_dict(
            {f"train/{stage}_{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            batch_size=size,
        )

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        text = torch.optim.Adam(self.model.text_parameters(), lr=self.text_lr, betas=self.betas)
        image = torch.optim.Adam(self.model.image_parameters(), lr=self.image_lr, betas=self.betas)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            image, milestones=self.lr_milestones, gamma=self.lr_gamma
        )
        return [text, image], [scheduler]

    # ----- checkpoints -----------------------------------------------------------------------------
    def _load_official(self, payload: dict[str, Any], path: str) -> None:
        """The official image-adapter file, with ``text_adapter.pth`` of its folder (see
        :mod:`~anomaly_vlm.methods.aaclip.official_weights`)."""
        super()._load_official(with_text_file(payload, path), path)

    def checkpoint_metadata(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().checkpoint_metadata(),
            "levels": list(model.levels),
            "image_adapt_until": model.image_adapt_until,
            "text_adapt_until": model.text_adapt_until,
            "relu": model.relu,
        }


class _Held:
    """Images of a loader batch not yet used by a stage-1 step (the rest of a split batch)."""

    def __init__(self, image: Tensor, mask: Tensor, category: list[str]) -> None:
        self.image, self.mask, self.category = image, mask, category

    def __len__(self) -> int:
        return len(self.image)
