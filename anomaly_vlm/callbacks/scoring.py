"""The one evaluation path: score a category's test images, finish the category, hand it on.

For test and predict alike, per category:

1. the method is set up for the category (text classifier, few-shot memory from the reference images);
2. every test batch goes through ``frozen_features``; an inductive method scores it at once
   (``score``), a transductive one has its features kept until the category is complete;
3. when the category ends (under DDP: once rank 0 has gathered every rank's shard, in rank order),
   a transductive method scores the whole category (``score_set``), then the method's set-level
   ``postprocess_set`` runs on the category's prediction;
4. the finished :class:`CategoryResult` goes to the consumers (metrics, written predictions,
   heatmaps).

Nothing about a category is kept on the method; the category being scored is stated here, by the
caller of :meth:`CategoryScoring.begin`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch import Tensor

from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoredBatch, concat_features


@dataclasses.dataclass
class CategoryResult:
    """A category's finished prediction with what is known about its images, in test-set order.

    Attributes:
        category: category name.
        paths, defect_types: per image.
        labels: ``[N]`` 0/1 (-1 unknown).
        masks: ``[N, H, W]`` bool ground truth, or None when the category has no masks.
        prediction: the final prediction (after ``score_set`` and ``postprocess_set``), float32 on CPU.
        images: position in the category -> ``[H, W, 3]`` uint8 image, for the images the consumers
            asked to draw (see :attr:`CategoryConsumer.images_wanted`), in drawing order.
    """

    category: str
    paths: list[str]
    defect_types: list[str]
    labels: Tensor
    masks: Tensor | None
    prediction: Prediction
    images: dict[int, np.ndarray]

    def __len__(self) -> int:
        return len(self.paths)


class CategoryConsumer(Protocol):
    """What receives a finished category (metrics, written predictions, heatmaps)."""

    #: Images per category it draws: None = every image, 0 = none. They are picked in test order,
    #: anomalous images first within each batch.
    images_wanted: int | None

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None: ...


@dataclasses.dataclass
class _Shard:
    """One rank's records of the current category."""

    paths: list[str] = dataclasses.field(default_factory=list)
    defect_types: list[str] = dataclasses.field(default_factory=list)
    labels: list[Tensor] = dataclasses.field(default_factory=list)
    masks: list[Tensor | None] = dataclasses.field(default_factory=list)
    predictions: list[Prediction] = dataclasses.field(default_factory=list)
    features: list[FrozenFeatures] = dataclasses.field(default_factory=list)
    images: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)


def _to_uint8(image: Tensor) -> np.ndarray:
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


class CategoryScoring(L.Callback):
    """Collects a category's batches during ``trainer.test`` and finishes the category at its end.

    Args:
        consumers: receive each finished category, in order.
    """

    def __init__(self, consumers: Sequence[CategoryConsumer]) -> None:
        self.consumers = list(consumers)
        self._next: tuple[str, Tensor | None] | None = None
        self._next_digests: Sequence[str | None] | None = None
        self._category: str | None = None
        self._shard = _Shard()

    @property
    def _image_budget(self) -> int | None:
        wanted = [consumer.images_wanted for consumer in self.consumers]
        return None if None in wanted else max(wanted, default=0)

    def begin(
        self,
        category: str,
        reference_images: Tensor | None,
        reference_digests: Sequence[str | None] | None = None,
    ) -> None:
        """State the category (and its normal reference images) that the next ``trainer.test`` scores.

        ``reference_digests``: the reference files' content digests, the feature cache's keys.
        """
        self._next = (category, reference_images)
        self._next_digests = reference_digests

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # Here, not in begin(): Lightning has moved the method to its device by now.
        if self._next is None:
            raise RuntimeError("CategoryScoring.begin(category, references) must precede trainer.test")
        category, references = self._next
        self._next, self._category, self._shard = None, category, _Shard()
        pl_module.reference_digests = self._next_digests
        try:
            with torch.no_grad():
                pl_module.setup_category(
                    category, None if references is None else references.to(pl_module.device)
                )
        finally:
            pl_module.reference_digests = self._next_digests = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        scored: ScoredBatch = outputs
        batch = scored.batch
        if set(batch.category) != {self._category}:
            raise RuntimeError(
                f"a test batch of category '{self._category}' holds images of {sorted(set(batch.category))}"
            )
        shard = self._shard
        self._keep_images(batch.image, batch.label, len(shard.paths))
        shard.paths += list(batch.path)
        shard.defect_types += list(batch.defect_type)
        shard.labels.append(batch.label.detach().cpu())
        shard.masks.append(None if batch.mask is None else batch.mask.detach().cpu() > 0.5)
        if scored.prediction is not None:
            shard.predictions.append(_cpu_float(scored.prediction))
        else:
            shard.features.append({name: value.detach().cpu() for name, value in scored.features.items()})

    def _keep_images(self, images: Tensor, labels: Tensor, offset: int) -> None:
        budget = self._image_budget
        remaining = len(images) if budget is None else budget - len(self._shard.images)
        # Anomalous images are the informative ones; take them first within each batch.
        order = sorted(range(len(images)), key=lambda i: -int(labels[i]))
        for index in order[: max(remaining, 0)]:
            self._shard.images.append((offset + index, _to_uint8(images[index])))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        shards = self._gather(trainer)
        if shards is None:
            return  # DDP: rank 0 alone finishes the category
        result = self._finish(pl_module, shards)
        for consumer in self.consumers:
            consumer.consume(result, trainer)

    def _gather(self, trainer: L.Trainer) -> list[_Shard] | None:
        shard, self._shard = self._shard, _Shard()
        if trainer.world_size <= 1:
            return [shard]
        import torch.distributed as dist

        gathered = [None] * trainer.world_size if trainer.is_global_zero else None
        dist.gather_object(shard, gathered, dst=0)
        return gathered if trainer.is_global_zero else None

    def _finish(self, pl_module: Any, shards: list[_Shard]) -> CategoryResult:
        paths, defect_types, images, offset = [], [], {}, 0
        for shard in shards:
            paths += shard.paths
            defect_types += shard.defect_types
            images.update({offset + index: image for index, image in shard.images})
            offset += len(shard.paths)
        masks = [mask for shard in shards for mask in shard.masks]
        features = [part for shard in shards for part in shard.features]
        if features:
            with torch.no_grad():
                device_features = {k: v.to(pl_module.device) for k, v in concat_features(features).items()}
                prediction = _cpu_float(pl_module.score_set(device_features))
        else:
            prediction = Prediction.concat([part for shard in shards for part in shard.predictions])
        with torch.no_grad():
            prediction = _cpu_float(pl_module.postprocess_set(prediction))
        if len(prediction) != len(paths):
            raise RuntimeError(
                f"category '{self._category}': {len(prediction)} predictions for {len(paths)} images"
            )
        budget = self._image_budget
        kept = list(images.items()) if budget is None else list(images.items())[:budget]
        return CategoryResult(
            category=self._category,
            paths=paths,
            defect_types=defect_types,
            labels=torch.cat([label for shard in shards for label in shard.labels]),
            masks=None if any(mask is None for mask in masks) else torch.cat(masks),
            prediction=prediction,
            images=dict(kept),
        )


def _cpu_float(prediction: Prediction) -> Prediction:
    detached = prediction.detach().to("cpu")
    return Prediction(
        detached.image_score.float(),
        detached.anomaly_map.float(),
        {name: value.float() for name, value in detached.extras.items()},
    )
