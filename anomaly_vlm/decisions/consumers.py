"""Thresholds and decision metrics on the one evaluation path.

Two consumers of finished categories (:class:`~anomaly_vlm.callbacks.scoring.CategoryConsumer`):

* :class:`HeldOutThresholds` receives the held-out normal images of each category, scored exactly
  like test images (same ``setup_category``, same references, same set-level post-processing), and
  chooses the ``normal_fpr`` thresholds from them;
* :class:`CategoryDecisions` applies a category's thresholds to its finished test prediction and
  computes the decision metrics (and, for ``threshold.method=f1``, chooses the threshold on it first).

The metric evaluator knows nothing of thresholds; these sit beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from collections.abc import Collection, Mapping, Sequence

import lightning as L
import numpy as np
import torch

from anomaly_vlm.callbacks.scoring import CategoryResult
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import DatasetSource
from anomaly_vlm.decisions.thresholds import (
    CategoryThresholds,
    ThresholdError,
    ThresholdSettings,
    decision_metrics,
    f1_threshold,
    mask_metrics,
    normal_fpr_threshold,
)
from anomaly_vlm.methods.contract import Prediction

log = logging.getLogger(__name__)

#: Decision metrics per category, in the order results list them.
DECISION_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "fpr", "pixel_iou", "pixel_dice")


def same_file(path: str | os.PathLike) -> str:
    """A key under which two spellings of one file (relative, absolute, through links) compare equal."""
    return os.path.normcase(os.path.realpath(os.fspath(path)))


def heldout_normals(
    train_samples: Sequence[Sample],
    references: Sequence[Sample],
    category: str,
    max_images: int = 0,
    trained_on: Collection[str] = (),
) -> list[Sample]:
    """The normal training images of a category that are neither few-shot references nor training images.

    Held out means unseen by the method: a threshold chosen on references (the few-shot memory) or on
    the images its parameters were trained on would be chosen on scores lower than new normal images
    get, so its real false-positive rate would be higher than ``target_fpr``.

    Args:
        train_samples: the category's training split (its normal images are the pool).
        references: the category's few-shot references.
        category: the category, for the message and the subset's seed.
        max_images: > 0 keeps a reproducible subset (seeded by the category name) of that size.
        trained_on: :func:`same_file` keys of every image the method was trained on.

    A category with no image left gets no decisions (a warning says why), while its ranking metrics are
    unaffected.
    """
    used = {same_file(sample.path) for sample in references}
    trained = set(trained_on)
    normal = [sample for sample in train_samples if sample.label == 0]
    keys = [same_file(sample.path) for sample in normal]
    unseen = [key not in used and key not in trained for key in keys]
    left = [sample for sample, keep in zip(normal, unseen, strict=True) if keep]
    if not left:
        seen_in_training = sum(1 for key in keys if key in trained and key not in used)
        if not seen_in_training:
            log.warning(
                "threshold.method=normal_fpr needs held-out normal images, but category '%s' has %d normal "
                "training images and all are references (shots=%d): no decisions for it. Lower shots, add "
                "normal images, or use threshold.method=f1 or threshold.method=fixed",
                category,
                len(normal),
                len(used),
            )
        else:
            log.warning(
                "threshold.method=normal_fpr needs held-out normal images (neither references nor training "
                "images), but of the %d normal training images of category '%s', %d trained the method "
                "(train_data) and %d are references: no decisions for it. Give data normal training "
                "images that train_data does not hold (e.g. another data.root), or use threshold.method=f1 "
                "or threshold.method=fixed",
                len(normal),
                category,
                seen_in_training,
                len(normal) - seen_in_training,
            )
        return []
    if 0 < max_images < len(left):
        rng = np.random.default_rng(zlib.crc32(category.encode()))
        keep = sorted(rng.choice(len(left), size=max_images, replace=False).tolist())
        left = [left[index] for index in keep]
    return left


class HeldOutSource(DatasetSource):
    """A dataset source whose ``test`` split is the held-out normal images of another source.

    Lets the held-out normals go through the same test loaders, scoring callback and set-level
    post-processing as the test images. ``trained_on``: :func:`same_file` keys of the images the method
    was trained on, which are not held out (see :func:`heldout_normals`).
    """

    name = "heldout_normal"
    labelled = True

    def __init__(
        self,
        source: DatasetSource,
        references: Mapping[str, Sequence[Sample]],
        max_images: int = 0,
        categories: Sequence[str] | None = None,
        trained_on: Collection[str] = (),
    ) -> None:
        pools = {
            category: heldout_normals(
                source.samples(category, "train"),
                references.get(category) or [],
                category,
                max_images,
                trained_on,
            )
            for category in (categories or source.categories)
        }
        self._samples = {category: samples for category, samples in pools.items() if samples}
        super().__init__(list(self._samples))

    def available_categories(self) -> list[str]:
        return list(self._samples)

    def samples(self, category: str, split: str) -> list[Sample]:
        if split != "test":
            raise ValueError(f"HeldOutSource has only a test split, not {split!r}")
        return list(self._samples[category])

    def has_masks(self, category: str) -> bool:
        return False


def _method(trainer: L.Trainer | None):
    """The method a trainer scores with (None without a trainer)."""
    return getattr(trainer, "lightning_module", None) if trainer is not None else None


def normal_fpr_thresholds(
    prediction: Prediction, target_fpr: float, heldout: Prediction | None = None
) -> CategoryThresholds:
    """``normal_fpr`` image and pixel thresholds of a held-out prediction (``heldout``: kept with them)."""
    return CategoryThresholds(
        image=normal_fpr_threshold(prediction.image_score.double().numpy(), target_fpr),
        pixel=normal_fpr_threshold(prediction.anomaly_map.numpy(), target_fpr),
        method="normal_fpr",
        source="heldout_normal",
        optimistic=False,
        num_images=len(prediction),
        target_fpr=target_fpr,
        heldout=heldout,
    )


class HeldOutThresholds:
    """Chooses each category's ``normal_fpr`` image and pixel thresholds from its held-out normals.

    For a method whose set-level step normalises with statistics of the scored set (APRIL-GAN few-shot),
    the held-out prediction is kept with the thresholds, to be chosen again on the test set's scale.
    """

    images_wanted = 0

    def __init__(self, target_fpr: float) -> None:
        self.target_fpr = float(target_fpr)
        self.thresholds: dict[str, CategoryThresholds] = {}

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        prediction = result.prediction
        method = _method(trainer)
        keep = method is not None and bool(method.set_statistics(prediction))
        self.thresholds[result.category] = normal_fpr_thresholds(
            prediction, self.target_fpr, prediction if keep else None
        )
        log.info(
            "%s: thresholds from %d held-out normal images: %s",
            result.category,
            len(result),
            self.thresholds[result.category],
        )


class CategoryDecisions:
    """Decision metrics of each finished test category at its thresholds.

    Args:
        settings: the ``threshold`` settings.
        thresholds: per category, thresholds chosen beforehand (``normal_fpr``); ``f1`` and ``fixed``
            choose theirs here.
    """

    images_wanted = 0

    def __init__(
        self, settings: ThresholdSettings, thresholds: Mapping[str, CategoryThresholds] | None = None
    ):
        self.settings = settings
        self.thresholds: dict[str, CategoryThresholds] = dict(thresholds or {})
        self.results: dict[str, dict[str, float | None]] = {}
        #: Why the thresholds transfer only approximately to the test set (None: they transfer).
        self.caveat: str | None = None

    def category_thresholds_fixed(self) -> CategoryThresholds:
        """The ``fixed`` thresholds as given."""
        return CategoryThresholds(self.settings.image, self.settings.pixel, "fixed", "given")

    def category_thresholds(self, result: CategoryResult, method=None) -> CategoryThresholds | None:
        """The thresholds for ``result``'s category: given, fixed, or F1-optimal on the result itself
        (None: ``normal_fpr`` for a category without held-out normal images).

        ``method``: the method that scored ``result``. When its image scores are normalised with
        statistics of the scored set, the held-out images were normalised over their own set: their
        ``normal_fpr`` thresholds are chosen again with the test set's statistics, the scale of the test
        scores they decide (and of a detector saved from the run, which freezes those statistics).
        """
        settings = self.settings
        if settings.method == "fixed":
            return self.category_thresholds_fixed()
        if settings.method == "normal_fpr":
            chosen = self.thresholds.get(result.category)  # None: no held-out normals (warned then)
            if chosen is None or chosen.heldout is None or method is None:
                return chosen
            statistics = method.set_statistics(result.prediction)
            if not statistics:
                return dataclasses.replace(chosen, heldout=None)
            with torch.no_grad():
                rescaled = method.postprocess_set(chosen.heldout, statistics)
            return normal_fpr_thresholds(rescaled, float(chosen.target_fpr))
        labels = result.labels.numpy()
        if (labels < 0).any():
            raise ThresholdError(
                "threshold.method=f1 needs labelled images; these are unlabelled (use normal_fpr or fixed)"
            )
        pixel = None
        if result.masks is not None and bool(result.masks.any()):
            pixel = f1_threshold(result.prediction.anomaly_map.numpy(), result.masks.numpy())
        # Chosen on the test set it is scored on: the decision metrics below are an upper bound.
        return CategoryThresholds(
            f1_threshold(result.prediction.image_score.double().numpy(), labels),
            pixel,
            "f1",
            "test",
            optimistic=True,
            num_images=len(result),
        )

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        chosen = self.category_thresholds(result, _method(trainer))
        metrics: dict[str, float | None] = dict.fromkeys(DECISION_METRICS)
        if chosen is None:
            self.results[result.category] = metrics  # no thresholds for this category: no decisions
            return
        self.thresholds[result.category] = chosen
        labels = result.labels.numpy()
        if not (labels < 0).any():
            metrics.update(
                decision_metrics(result.prediction.image_score.double().numpy(), labels, chosen.image)
            )
        if result.masks is not None and chosen.pixel is not None:
            metrics.update(
                mask_metrics(result.prediction.anomaly_map.numpy(), result.masks.numpy(), chosen.pixel)
            )
        self.results[result.category] = metrics
        log.info(
            "%s: decisions at image>%.6g: %s%s",
            result.category,
            chosen.image,
            {k: (None if v is None else round(v, 4)) for k, v in metrics.items()},
            " (optimistic: threshold chosen on the test set)" if chosen.optimistic else "",
        )

    def summary(self) -> dict:
        """The ``decisions`` block of results.json: settings, thresholds and metrics per category, means."""
        means: dict[str, float | None] = {}
        for name in DECISION_METRICS:
            values = [row[name] for row in self.results.values() if row.get(name) is not None]
            means[name] = float(np.mean(values)) if values else None
        return {
            "method": self.settings.method,
            "target_fpr": self.settings.target_fpr if self.settings.method == "normal_fpr" else None,
            "optimistic": any(t.optimistic for t in self.thresholds.values()),
            "caveat": self.caveat,
            "thresholds": {category: t.to_dict() for category, t in self.thresholds.items()},
            "per_category": self.results,
            "mean": means,
        }
