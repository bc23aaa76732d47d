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

from anomaly_vlm.data.image_io import DataError
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
            asked to draw (see :attr:`CategoryConsumer.images_wanted`), in drawing order
            (:func:`drawing_order`).
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

    #: Images per category it draws: None = every image, 0 = none. They are picked by
    #: :func:`drawing_order`: anomalous images first, one of each defect type in turn.
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
    #: Per batch the size its maps must have (``AnomalyBatch.map_size``; None: the method's own).
    map_sizes: list[tuple[int, int] | None] = dataclasses.field(default_factory=list)
    #: (position in the shard, defect type, label, image) of the images kept to draw, in drawing order.
    images: list[tuple[int, str, int, np.ndarray]] = dataclasses.field(default_factory=list)


def drawing_order(defect_types: Sequence[str], labels: Sequence[int]) -> list[int]:
    """The positions of a category's images in the order they are drawn as overlays.

    Anomalous images first, one of each defect type in turn (types alphabetically, images in test order
    within a type), so a few overlays show the category's different defects rather than the first
    defect folder only; then the other images in test order.
    """
    taken: dict[str, int] = {}
    keys = []
    for position, (kind, label) in enumerate(zip(defect_types, labels, strict=True)):
        if int(label) == 1:
            turn = taken.get(kind, 0)
            taken[kind] = turn + 1
            keys.append((0, turn, kind, position))
        else:
            keys.append((1, 0, "", position))
    return [key[-1] for key in sorted(keys)]


def _first_to_draw(
    entries: list[tuple[int, str, int, np.ndarray]], budget: int | None
) -> list[tuple[int, str, int, np.ndarray]]:
    """The first ``budget`` of ``entries`` (position-sorted or not) in :func:`drawing_order`."""
    entries = sorted(entries, key=lambda entry: entry[0])
    order = drawing_order([entry[1] for entry in entries], [entry[2] for entry in entries])
    return [entries[index] for index in order[:budget]]


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
        self._keep_images(batch.image, batch.label, batch.defect_type, len(shard.paths))
        shard.paths += list(batch.path)
        shard.defect_types += list(batch.defect_type)
        shard.labels.append(batch.label.detach().cpu())
        shard.masks.append(None if batch.mask is None else batch.mask.detach().cpu() > 0.5)
        shard.map_sizes.append(batch.map_size)
        if scored.prediction is not None:
            shard.predictions.append(_cpu_float(scored.prediction))
        else:
            shard.features.append({name: value.detach().cpu() for name, value in scored.features.items()})

    def _keep_images(self, images: Tensor, labels: Tensor, defect_types: Sequence[str], offset: int) -> None:
        budget = self._image_budget
        if budget == 0:
            return
        if budget is None:  # every image
            self._shard.images += [
                (offset + i, defect_types[i], int(labels[i]), _to_uint8(images[i]))
                for i in range(len(images))
            ]
            return
        batch = [(offset + i, defect_types[i], int(labels[i]), images[i]) for i in range(len(images))]
        # At most ``budget`` images are held: an image dropped here comes after ``budget`` others in the
        # drawing order, and later images only ever add to those ahead of it.
        kept = _first_to_draw(self._shard.images + batch, budget)
        self._shard.images = [
            entry if isinstance(entry[3], np.ndarray) else (*entry[:3], _to_uint8(entry[3])) for entry in kept
        ]

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
        paths, defect_types, images, offset = [], [], [], 0
        for shard in shards:
            paths += shard.paths
            defect_types += shard.defect_types
            images += [(offset + index, *rest) for index, *rest in shard.images]
            offset += len(shard.paths)
        masks = [mask for shard in shards for mask in shard.masks]
        features = [part for shard in shards for part in shard.features]
        map_sizes = {size for shard in shards for size in shard.map_sizes}
        if len(map_sizes) > 1:
            # Maps and masks of a category are held as one [N, H, W] tensor each.
            raise DataError(
                f"category '{self._category}' holds files of several sizes "
                f"({', '.join(sorted(f'{w}x{h}' for h, w in map_sizes if h))}); evaluating at the files' "
                "resolution needs one size per category (datamodule.evaluation_resolution=input evaluates "
                "at the input size)"
            )
        map_size = next(iter(map_sizes), None)
        if features:
            with torch.no_grad():
                device_features = {k: v.to(pl_module.device) for k, v in concat_features(features).items()}
                if map_size is None:
                    prediction = _cpu_float(pl_module.score_set(device_features))
                else:
                    prediction = _cpu_float(pl_module.score_set_at(device_features, map_size))
        else:
            prediction = Prediction.concat([part for shard in shards for part in shard.predictions])
        with torch.no_grad():
            prediction = _cpu_float(pl_module.postprocess_set(prediction))
        if len(prediction) != len(paths):
            raise RuntimeError(
                f"category '{self._category}': {len(prediction)} predictions for {len(paths)} images"
            )
        # Under DDP each rank kept its own first images to draw; the union is ordered once more.
        kept = {entry[0]: entry[3] for entry in _first_to_draw(images, self._image_budget)}
        return CategoryResult(
            category=self._category,
            paths=paths,
            defect_types=defect_types,
            labels=torch.cat([label for shard in shards for label in shard.labels]),
            masks=None if any(mask is None for mask in masks) else torch.cat(masks),
            prediction=prediction,
            images=kept,
        )


def _cpu_float(prediction: Prediction) -> Prediction:
    detached = prediction.detach().to("cpu")
    return Prediction(
        detached.image_score.float(),
        detached.anomaly_map.float(),
        {name: value.float() for name, value in detached.extras.items()},
    )
