"""Thresholds that turn anomaly scores into ok/defect decisions, and the metrics of those decisions.

Convention everywhere: a score strictly above the threshold is a defect (``score > threshold``), for
image scores and for anomaly-map pixels alike.

Three ways to choose a category's image and pixel thresholds (``threshold.method``):

* ``normal_fpr`` (default): from held-out normal images -- normal training images that were neither
  drawn as few-shot references nor used to train the method (``train_data``) -- so that at most
  ``target_fpr`` of their image scores (and of their map pixels) lie above the threshold. Needs no
  defect examples, and the test set never sees it.
* ``f1``: the F1-optimal threshold on a labelled set. Chosen on the test set itself it is optimistic
  (the decision metrics are then an upper bound), and the results say so.
* ``fixed``: ``threshold.image`` and ``threshold.pixel`` as given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from anomaly_vlm.metrics.functional import to_numpy

THRESHOLD_METHODS: tuple[str, ...] = ("normal_fpr", "f1", "fixed")


class ThresholdError(ValueError):
    """A ``threshold.*`` value that cannot work (unknown method, FPR outside (0, 1), no held-out images)."""


@dataclasses.dataclass(frozen=True)
class ThresholdSettings:
    """The ``threshold`` config node.

    Attributes:
        method: one of :data:`THRESHOLD_METHODS`.
        target_fpr: for ``normal_fpr``, the largest fraction of held-out normal scores (and pixels)
            allowed above the threshold.
        image: for ``fixed``, the image threshold.
        pixel: for ``fixed``, the pixel threshold (None: no pixel decisions).
        max_holdout: for ``normal_fpr``, at most this many held-out normal images per category
            (0 = all of them).
    """

    method: str = "normal_fpr"
    target_fpr: float = 0.01
    image: float | None = None
    pixel: float | None = None
    max_holdout: int = 32

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            raise ThresholdError(f"threshold.method={self.method} is not one of {list(THRESHOLD_METHODS)}")
        if self.method == "normal_fpr" and not 0.0 <= float(self.target_fpr) < 1.0:
            raise ThresholdError(f"threshold.target_fpr={self.target_fpr} must be in [0, 1), e.g. 0.01")
        if self.method == "fixed" and self.image is None:
            raise ThresholdError(
                "threshold.method=fixed needs threshold.image=<score> (and threshold.pixel=)"
            )
        if int(self.max_holdout) < 0:
            raise ThresholdError(f"threshold.max_holdout={self.max_holdout} must be >= 0 (0 = all)")

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> ThresholdSettings:
        """Settings from the ``threshold`` node (None: the defaults); unknown keys are an error."""
        values = dict(node or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ThresholdError(f"threshold.{unknown[0]} is not a threshold setting; valid: {sorted(known)}")
        for key in ("image", "pixel", "target_fpr"):
            if values.get(key) is not None:
                try:
                    values[key] = float(values[key])
                except (TypeError, ValueError):
                    raise ThresholdError(f"threshold.{key}={values[key]} is not a number") from None
        return cls(**values)


@dataclasses.dataclass
class CategoryThresholds:
    """A category's thresholds and where they came from.

    Attributes:
        image: image-score threshold (defect iff score > image).
        pixel: map threshold (defect pixel iff value > pixel), or None when none could be chosen.
        method: how they were chosen (:data:`THRESHOLD_METHODS`).
        source: the images they were chosen on: ``heldout_normal``, ``test`` or ``given``.
        optimistic: chosen on the very images the decision metrics are computed on.
        num_images: images they were chosen on (0 for ``fixed``).
        target_fpr: the target of ``normal_fpr`` (None otherwise).
        heldout: the held-out prediction they were chosen on, kept (in memory, never written) when the
            method's image scores are normalised with statistics of the scored set, so that they can be
            chosen again on the scale of the test set's statistics (see
            :class:`~anomaly_vlm.decisions.consumers.CategoryDecisions`).
    """

    image: float
    pixel: float | None
    method: str
    source: str
    optimistic: bool = False
    num_images: int = 0
    target_fpr: float | None = None
    heldout: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "heldout"
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CategoryThresholds:
        names = [field.name for field in dataclasses.fields(cls) if field.name != "heldout"]
        return cls(**{name: values.get(name) for name in names})


def normal_fpr_threshold(normal_scores: Any, target_fpr: float) -> float:
    """The smallest threshold that leaves at most ``target_fpr`` of ``normal_scores`` above it.

    With ``n`` normal scores, ``floor(target_fpr * n)`` of them may exceed the threshold; the threshold
    is the next score down, so it is one of the observed scores (ties can only lower the realised FPR).

    Raises:
        ThresholdError: when there are no scores or they are not finite.
    """
    scores = to_numpy(normal_scores).astype(np.float64, copy=False).reshape(-1)
    if scores.size == 0:
        raise ThresholdError("normal_fpr threshold: no held-out normal scores")
    if not np.isfinite(scores).all():
        raise ThresholdError("normal_fpr threshold: non-finite held-out normal scores")
    allowed = int(math.floor(float(target_fpr) * scores.size + 1e-9))
    # The (allowed + 1)-th largest score; np.partition avoids sorting millions of map pixels.
    kth = scores.size - 1 - allowed
    return float(np.partition(scores, kth)[kth])


def f1_threshold(scores: Any, labels: Any) -> float:
    """The threshold of maximal F1 (defect iff score > threshold) on labelled scores.

    Candidate decisions are "defect iff score >= v" for each distinct score ``v``; the returned
    threshold is the next distinct score below ``v`` (or just below ``v`` for the lowest score), so the
    ``>`` convention makes exactly those decisions.

    Raises:
        ThresholdError: when the labels hold no anomalous example.
    """
    values = to_numpy(scores).astype(np.float64, copy=False).reshape(-1)
    truth = to_numpy(labels).reshape(-1).astype(bool)
    if values.size != truth.size:
        raise ThresholdError(f"f1 threshold: {values.size} scores for {truth.size} labels")
    positives = int(truth.sum())
    if positives == 0:
        raise ThresholdError("threshold.method=f1 needs anomalous examples; the labels hold none")
    order = np.argsort(-values, kind="stable")
    sorted_values, sorted_truth = values[order], truth[order]
    true_pos = np.cumsum(sorted_truth)
    false_pos = np.cumsum(~sorted_truth)
    # Only the last position of each run of equal scores is a realisable decision.
    last = np.r_[sorted_values[1:] != sorted_values[:-1], True]
    tp, fp = true_pos[last], false_pos[last]
    f1 = 2 * tp / (2 * tp + fp + (positives - tp))
    best = int(np.argmax(f1))
    distinct = sorted_values[last]
    if best + 1 < distinct.size:
        return float(distinct[best + 1])
    return float(np.nextafter(distinct[best], -np.inf))


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def decision_metrics(scores: Any, labels: Any, threshold: float) -> dict[str, float | None]:
    """Accuracy, precision, recall and FPR of "defect iff score > threshold" on labelled images.

    A metric whose denominator is zero (e.g. precision when nothing is flagged) is None, not 0.
    """
    predicted = to_numpy(scores).astype(np.float64, copy=False).reshape(-1) > float(threshold)
    truth = to_numpy(labels).reshape(-1).astype(bool)
    tp = int(np.sum(predicted & truth))
    fp = int(np.sum(predicted & ~truth))
    fn = int(np.sum(~predicted & truth))
    tn = int(np.sum(~predicted & ~truth))
    return {
        "accuracy": _ratio(tp + tn, truth.size),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
    }


def mask_metrics(anomaly_maps: Any, masks: Any, threshold: float) -> dict[str, float | None]:
    """Pixel IoU and Dice of the binary masks ``map > threshold`` against the ground truth.

    Pooled over the category (total intersection over total union), so images without a defect count
    through their false-positive pixels. None when both the prediction and the truth are empty.
    """
    predicted = to_numpy(anomaly_maps) > float(threshold)
    truth = to_numpy(masks).astype(bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask_metrics: maps {predicted.shape} and masks {truth.shape} differ")
    intersection = int(np.sum(predicted & truth))
    predicted_area, true_area = int(predicted.sum()), int(truth.sum())
    union = predicted_area + true_area - intersection
    return {
        "pixel_iou": _ratio(intersection, union),
        "pixel_dice": _ratio(2 * intersection, predicted_area + true_area),
    }
