"""Exact ranking metrics for anomaly detection (AUROC, AP, F1-max, AUPRO).

All metrics are computed exactly from the scores, never from a grid of thresholds. Ties are collapsed:
curves are only evaluated at thresholds where the score changes, which is what
``sklearn.metrics.roc_auc_score``, ``average_precision_score`` and MVTec's reference AUPRO do.

Design: the scores are split by ground truth into negatives and positives (:class:`ScoreSplit`), and
each side is sorted once. Every curve point needed by the four metrics is then a pair of counts,
``#negatives >= t`` and ``#positives >= t`` (plus the region-weighted positive sum for PRO), obtained by
binary search of one sorted side into the other. This is equivalent to one descending sort of all
scores with cumulative TP/FP counts at distinct-score boundaries, but it needs a plain value sort
instead of an argsort of every pixel, which is both faster and avoids an int64 index per pixel:

* AUROC is the Mann-Whitney statistic (ties count one half), which equals the trapezoid under the
  tie-collapsed ROC curve.
* AP and F1-max only change at distinct positive scores (a threshold that only admits negatives
  lowers precision at constant recall), so they are evaluated at those.
* AUPRO: FPR only changes at distinct negative scores, so the trapezoid area under PRO(FPR) is a sum
  over distinct negative scores ``t`` of ``(FPR(>=t) - FPR(>t)) * (PRO(>=t) + PRO(>t)) / 2``; the
  segment that crosses the FPR limit is interpolated linearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "ScoreSplit",
    "aupro",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "official_aupro",
    "pixel_metrics",
    "ranking_metrics",
    "region_sizes",
    "to_numpy",
]

# Per-chunk work arrays are ~60 bytes per element; 2**20 keeps them at tens of MB even for
# categories with tens of millions of pixels.
_CHUNK = 1 << 20

# 8-connectivity inside each image and no connectivity along the batch axis, so one ndimage.label
# call labels a whole batch of masks with regions that never span two images.
_BATCH_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_BATCH_STRUCTURE[1] = True


def to_numpy(x: Any) -> np.ndarray:
    """Converts a torch tensor (any device, any dtype) or array-like to a numpy array.

    torch is not imported: tensors are recognised by their ``detach`` method, so this module stays
    usable without torch.

    Args:
        x: A ``torch.Tensor``, ``np.ndarray`` or anything ``np.asarray`` accepts.

    Returns:
        A numpy array (a view when no conversion is needed). Half-precision tensors become float32
        because numpy has no bfloat16.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_labels(labels: Any, n: int, what: str) -> np.ndarray:
    labels = to_numpy(labels).reshape(-1)
    if labels.size != n:
        raise ValueError(f"{what}: got {labels.size} labels for {n} scores.")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{what}: labels must be 0/1 (or bool).")
        labels = labels.astype(bool)
    return labels


def _as_masks(masks: Any) -> np.ndarray:
    masks = to_numpy(masks)
    # Binarise at 0.5 so that soft (resized) masks and 0/255 masks are both handled.
    return masks if masks.dtype == bool else masks > 0.5


def _check_finite(scores: np.ndarray, what: str) -> None:
    # NaN has no place in an ordering; +-inf sorts fine and is allowed.
    if np.isnan(scores).any():
        raise ValueError(f"{what}: scores contain NaN.")


def region_sizes(masks: Any) -> tuple[np.ndarray, int]:
    """Labels the connected ground-truth regions of each mask and sizes them.

    Regions are 8-connected and labelled per image (a region never spans two images).

    Args:
        masks: ``[B, H, W]`` or ``[H, W]`` masks (bool, 0/1, or soft masks binarised at 0.5).

    Returns:
        ``(sizes, num_regions)``: ``sizes[i]`` is the pixel count of the region containing the i-th
        anomalous pixel, in the C order of ``masks[masks]`` (int64), and ``num_regions`` is the
        number of regions over all images.
    """
    masks = _as_masks(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"region_sizes: expected [B, H, W] masks, got shape {masks.shape}.")
    regions, num_regions = ndimage.label(masks, structure=_BATCH_STRUCTURE)
    counts = np.bincount(regions.ravel(), minlength=num_regions + 1)
    return counts[regions[masks]], int(num_regions)


@dataclass
class ScoreSplit:
    """Scores split by ground truth: everything the exact metrics need, stored compactly.

    Attributes:
        negatives: Scores of the normal elements (label 0 / background pixels), 1-D.
        positives: Scores of the anomalous elements, 1-D.
        region_sizes: For pixel data, the size of the ground-truth region of each positive (aligned
            with ``positives``); ``None`` for image-level data.
        num_regions: Number of ground-truth regions (pixel data only).
    """

    negatives: np.ndarray
    positives: np.ndarray
    region_sizes: np.ndarray | None = None
    num_regions: int = 0
    _sorted: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def from_labels(cls, scores: Any, labels: Any) -> ScoreSplit:
        """Builds a split from ``scores[N]`` and binary ``labels[N]`` (arrays or tensors).

        Args:
            scores: Anomaly scores, higher = more anomalous.
            labels: 0/1 or bool ground truth, 1 = anomalous.

        Returns:
            A split owning fresh arrays of the scores.

        Raises:
            ValueError: On length mismatch, non-binary labels or NaN scores.
        """
        scores = to_numpy(scores).reshape(-1)
        labels = _as_labels(labels, scores.size, "ScoreSplit.from_labels")
        _check_finite(scores, "ScoreSplit.from_labels")
        return cls(negatives=scores[~labels], positives=scores[labels])

    @classmethod
    def from_maps(cls, anomaly_maps: Any, masks: Any) -> ScoreSplit:
        """Builds a pixel-level split from anomaly maps and ground-truth masks.

        Maps are stored as float32; the connected regions are labelled here, per image, so that
        computing the metrics later is a pure sort-and-search.

        Args:
            anomaly_maps: ``[B, H, W]`` (or ``[H, W]``) float maps, higher = more anomalous.
            masks: Masks of the same shape (bool, 0/1, or soft masks binarised at 0.5).

        Returns:
            The split of all pixels, with region sizes of the anomalous pixels.

        Raises:
            ValueError: On shape mismatch or NaN in the maps.
        """
        maps = to_numpy(anomaly_maps).astype(np.float32, copy=False)
        masks = _as_masks(masks)
        if maps.shape != masks.shape:
            raise ValueError(f"ScoreSplit.from_maps: maps {maps.shape} vs masks {masks.shape}.")
        if maps.ndim == 2:
            maps, masks = maps[None], masks[None]
        _check_finite(maps, "ScoreSplit.from_maps")
        sizes, num_regions = region_sizes(masks)
        return cls(
            negatives=maps[~masks],
            positives=maps[masks],
            region_sizes=sizes.astype(np.int32),
            num_regions=num_regions,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[ScoreSplit]) -> ScoreSplit:
        """Concatenates splits (e.g. the batches of one category) into one.

        Args:
            parts: Splits to join; region data is kept only if every part has it.

        Returns:
            A split owning new arrays.
        """
        if not parts:
            raise ValueError("ScoreSplit.concatenate: nothing to concatenate.")
        has_regions = all(p.region_sizes is not None for p in parts)
        return cls(
            negatives=np.concatenate([p.negatives for p in parts]),
            positives=np.concatenate([p.positives for p in parts]),
            region_sizes=np.concatenate([p.region_sizes for p in parts]) if has_regions else None,
            num_regions=sum(p.num_regions for p in parts) if has_regions else 0,
        )

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        extra = 0 if self.region_sizes is None else self.region_sizes.nbytes
        return self.negatives.nbytes + self.positives.nbytes + extra

    def sort(self) -> None:
        """Sorts both sides ascending, in place (the element order carries no meaning)."""
        if self._sorted:
            return
        self.negatives.sort()
        if self.region_sizes is None:
            self.positives.sort()
        else:
            order = np.argsort(self.positives)
            self.positives = self.positives[order]
            self.region_sizes = self.region_sizes[order]
        self._sorted = True


def _group_bounds(sorted_values: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Start/end indices (end exclusive) of runs of equal values in ``sorted_values[start:]``."""
    seg = sorted_values[start:]
    change = np.flatnonzero(seg[1:] != seg[:-1]) + (start + 1)
    starts = np.concatenate(([start], change))
    ends = np.append(change, sorted_values.size)
    return starts, ends


def ranking_metrics(split: ScoreSplit, pro_fpr_limit: float | None = None) -> dict[str, float]:
    """Exact AUROC, AP, F1-max and, for pixel data, AUPRO of a score split.

    Sorts the split in place (see :meth:`ScoreSplit.sort`).

    Args:
        split: Scores split by ground truth.
        pro_fpr_limit: If given, also compute AUPRO integrated over FPR in ``[0, pro_fpr_limit]`` and
            normalised by the limit; the split must carry region sizes.

    Returns:
        ``{"auroc", "ap", "f1max"}`` (plus ``"aupro"``) as floats in ``[0, 1]``.

    Raises:
        ValueError: If either class is empty (the metrics are undefined, not 0 or 0.5), if the data
            contain NaN, or if AUPRO is requested without region data.
    """
    n_neg, n_pos = split.negatives.size, split.positives.size
    if n_neg == 0 or n_pos == 0:
        missing = "anomalous (positive)" if n_pos == 0 else "normal (negative)"
        raise ValueError(
            f"Metrics undefined: the data contain only one class (no {missing} samples; "
            f"{n_neg} negatives, {n_pos} positives)."
        )
    if pro_fpr_limit is not None:
        if not 0.0 < pro_fpr_limit <= 1.0:
            raise ValueError(f"pro_fpr_limit must be in (0, 1], got {pro_fpr_limit}.")
        if split.region_sizes is None or split.num_regions == 0:
            raise ValueError("AUPRO needs ground-truth region data (build the split with from_maps).")
    split.sort()
    neg, pos = split.negatives, split.positives
    # NaN sorts last, so checking the maxima covers splits built by hand.
    if np.isnan(neg[-1]) or np.isnan(pos[-1]):
        raise ValueError("ranking_metrics: scores contain NaN.")

    # Curve points at distinct positive scores v: TP = #pos >= v, FP = #neg >= v.
    starts, ends = _group_bounds(pos)
    mw_twice = 0  # twice the Mann-Whitney U statistic, kept as an exact integer
    ap_num = 0.0
    f1_best = 0.0
    for a in range(0, starts.size, _CHUNK):
        s, e = starts[a : a + _CHUNK], ends[a : a + _CHUNK]
        v = pos[s]
        below = np.searchsorted(neg, v, side="left")
        below_or_tied = np.searchsorted(neg, v, side="right")
        count = e - s
        mw_twice += int(np.dot(count, below + below_or_tied))
        tp = (n_pos - s).astype(np.float64)
        fp = (n_neg - below).astype(np.float64)
        ap_num += float(np.dot(count, tp / (tp + fp)))
        f1_best = max(f1_best, float(np.max(2.0 * tp / (tp + fp + n_pos))))
    out = {
        "auroc": mw_twice / (2.0 * n_pos * n_neg),
        "ap": ap_num / n_pos,
        "f1max": f1_best,
    }
    if pro_fpr_limit is not None:
        out["aupro"] = _aupro_sorted(split, pro_fpr_limit)
    return out


def _aupro_sorted(split: ScoreSplit, limit: float) -> float:
    neg, pos = split.negatives, split.positives
    n_neg = neg.size
    weights = 1.0 / split.region_sizes.astype(np.float64)
    # tail[i] = sum of the weights of pos[i:], so PRO(>= v) = tail[first index with pos >= v] / R.
    # Summing from the top (reversed cumsum) keeps the high-score end, where the area is, accurate.
    tail = np.zeros(pos.size + 1)
    tail[:-1] = np.cumsum(weights[::-1])[::-1]
    del weights
    tail /= split.num_regions

    # Only the negatives ranked in the top `limit` fraction can move FPR below the limit; start at
    # the beginning of the tie group that contains the first negative past it.
    needed = min(n_neg, int(np.ceil(limit * n_neg)) + 1)
    first = int(np.searchsorted(neg, neg[n_neg - needed], side="left"))
    starts, ends = _group_bounds(neg, first)

    area = 0.0
    for a in range(0, starts.size, _CHUNK):
        s, e = starts[a : a + _CHUNK], ends[a : a + _CHUNK]
        v = neg[s]
        fpr_hi = (n_neg - s) / n_neg  # FPR at threshold >= v (this group included)
        fpr_lo = (n_neg - e) / n_neg  # FPR at threshold > v
        pro_hi = tail[np.searchsorted(pos, v, side="left")]
        pro_lo = tail[np.searchsorted(pos, v, side="right")]
        full = fpr_hi <= limit
        area += float(np.dot(fpr_hi[full] - fpr_lo[full], pro_hi[full] + pro_lo[full])) / 2.0
        crossing = np.flatnonzero((fpr_lo < limit) & ~full)
        for i in crossing:  # at most one segment straddles the limit
            t = (limit - fpr_lo[i]) / (fpr_hi[i] - fpr_lo[i])
            pro_at_limit = pro_lo[i] + t * (pro_hi[i] - pro_lo[i])
            area += (limit - fpr_lo[i]) * (pro_lo[i] + pro_at_limit) / 2.0
    return area / limit


def official_aupro(split: ScoreSplit, fpr_limit: float = 0.3, steps: int = 200) -> float:
    """The AUPRO of the APRIL-GAN and AnomalyCLIP evaluation code (after cflow-ad), not MVTec's exact one.

    Their published AUPROs are this number: thresholds ``min + k * (max - min) / steps`` for
    ``k = 0 .. steps - 1`` (``np.arange`` in the maps' own float32) over all pixels of the category; at
    each, a pixel counts as anomalous when ``score > threshold``; PRO = mean over all ground-truth regions
    (8-connected, per image) of the region's detected fraction; FPR over the normal pixels. Points with
    ``FPR < fpr_limit`` are kept, their FPRs rescaled to ``[0, 1]`` by their own min and max, and the
    trapezoid area under PRO taken (``sklearn.metrics.auc``). The rescaling makes the number depend on the
    grid, so it is not comparable with the exact AUPRO of :func:`ranking_metrics`.

    Sorts the split in place (see :meth:`ScoreSplit.sort`).

    Args:
        split: Pixel scores split by ground truth, with region sizes (:meth:`ScoreSplit.from_maps`).
        fpr_limit: Keep points with FPR strictly below it (0.3).
        steps: Number of grid steps between the smallest and the largest score (200).

    Returns:
        The area in ``[0, 1]``, or NaN where the official code divides by zero (constant maps, or fewer
        than two distinct kept FPRs).
    """
    if split.region_sizes is None or split.num_regions == 0:
        raise ValueError("official_aupro needs ground-truth region data (build the split with from_maps).")
    if split.negatives.size == 0:
        raise ValueError("official_aupro: no normal pixels, FPR is undefined.")
    split.sort()
    neg, pos = split.negatives, split.positives
    low = min(neg[0], pos[0]) if pos.size else neg[0]
    high = max(neg[-1], pos[-1]) if pos.size else neg[-1]
    delta = (high - low) / steps  # same dtype arithmetic as the reference (float32 maps -> float32 grid)
    if not delta > 0:
        return float("nan")
    thresholds = np.arange(low, high, delta)
    weights = 1.0 / split.region_sizes.astype(np.float64)
    tail = np.zeros(pos.size + 1)
    tail[:-1] = np.cumsum(weights[::-1])[::-1]
    pro = tail[np.searchsorted(pos, thresholds, side="right")] / split.num_regions
    fpr = (neg.size - np.searchsorted(neg, thresholds, side="right")) / neg.size
    kept = fpr < fpr_limit
    fpr, pro = fpr[kept], pro[kept]
    if fpr.size < 2 or fpr.max() == fpr.min():
        return float("nan")
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # FPR falls as the threshold rises: integrate in ascending FPR, as sklearn's auc does for a
    # decreasing x (it negates the trapezoid of the reversed direction).
    return float(np.trapezoid(pro[::-1], fpr[::-1]))


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Exact image-level AUROC, AP and F1-max from one sort.

    Args:
        scores: ``[N]`` image scores (array or tensor), higher = more anomalous.
        labels: ``[N]`` 0/1 or bool labels, 1 = anomalous.

    Returns:
        ``{"image_auroc", "image_ap", "image_f1max"}``.

    Raises:
        ValueError: If all labels are of one class, or on malformed input.
    """
    split = ScoreSplit.from_labels(scores, labels)
    m = ranking_metrics(split)
    return {"image_auroc": m["auroc"], "image_ap": m["ap"], "image_f1max": m["f1max"]}


def pixel_metrics(anomaly_maps: Any, masks: Any, pro_fpr_limit: float = 0.3) -> dict[str, float]:
    """Exact pixel-level AUROC, AP, F1-max and AUPRO over all pixels of all given maps.

    Args:
        anomaly_maps: ``[B, H, W]`` maps (array or tensor).
        masks: ``[B, H, W]`` ground-truth masks.
        pro_fpr_limit: Upper FPR bound of the AUPRO integral (MVTec: 0.3).

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}``.

    Raises:
        ValueError: If the masks are all empty or all full, or on malformed input.
    """
    split = ScoreSplit.from_maps(anomaly_maps, masks)
    m = ranking_metrics(split, pro_fpr_limit=pro_fpr_limit)
    return {
        "pixel_auroc": m["auroc"],
        "pixel_ap": m["ap"],
        "pixel_f1max": m["f1max"],
        "pixel_aupro": m["aupro"],
    }


def auroc(scores: Any, labels: Any) -> float:
    """Exact area under the ROC curve (equals ``sklearn.metrics.roc_auc_score``).

    Args:
        scores: ``[N]`` scores, higher = more positive.
        labels: ``[N]`` 0/1 or bool labels.

    Returns:
        AUROC in ``[0, 1]``.
    """
    return ranking_metrics(ScoreSplit.from_labels(scores, labels))["auroc"]


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (as sklearn).

    Args:
        scores: ``[N]`` scores, higher = more positive.
        labels: ``[N]`` 0/1 or bool labels.

    Returns:
        AP in ``[0, 1]``.
    """
    return ranking_metrics(ScoreSplit.from_labels(scores, labels))["ap"]


def f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over all distinct thresholds of the precision-recall curve.

    Args:
        scores: ``[N]`` scores, higher = more positive.
        labels: ``[N]`` 0/1 or bool labels.

    Returns:
        F1-max in ``[0, 1]``.
    """
    return ranking_metrics(ScoreSplit.from_labels(scores, labels))["f1max"]


def aupro(anomaly_maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AUPRO).

    Args:
        anomaly_maps: ``[B, H, W]`` maps.
        masks: ``[B, H, W]`` masks; regions are 8-connected components, labelled per image.
        fpr_limit: Upper FPR bound of the integral; the area is divided by it.

    Returns:
        AUPRO in ``[0, 1]``.
    """
    return pixel_metrics(anomaly_maps, masks, pro_fpr_limit=fpr_limit)["pixel_aupro"]
