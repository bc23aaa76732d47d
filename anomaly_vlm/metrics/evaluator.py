"""Per-category evaluator: accumulates scores, maps and masks, then computes exact metrics.

Pixel data are stored already split by ground truth (:class:`ScoreSplit`): background scores and
anomalous scores as float32 plus the int32 size of each anomalous pixel's region, labelled at update
time. That is ~4 bytes per pixel, and computing a category is one sort per side.

It holds whole categories in one process: the evaluation path gathers a category's predictions on
rank 0 before it scores them (set-level post-processing needs the whole category first), so there is
nothing to synchronise across ranks here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from anomaly_vlm.metrics.functional import ScoreSplit, official_aupro, ranking_metrics, to_numpy

__all__ = ["AUPRO_VARIANTS", "METRIC_NAMES", "Evaluator"]

#: ``metrics.aupro``: ``exact`` (MVTec's definition, the default) or ``official`` (the thresholds-grid
#: variant of the APRIL-GAN / AnomalyCLIP evaluation code, which their published AUPROs are).
AUPRO_VARIANTS: tuple[str, ...] = ("exact", "official")

METRIC_NAMES: tuple[str, ...] = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)


#: Per-category arrays, concatenated when computed, and counts.
_CAT_STATES = ("scores", "labels", "negatives", "positives", "region_sizes")
_SUM_STATES = ("num_regions", "images_with_pixels", "images_without_pixels")
_DTYPES = {
    "scores": np.float64,
    "labels": np.uint8,
    "negatives": np.float32,
    "positives": np.float32,
    "region_sizes": np.int32,
}


def _squeeze_channel(x: np.ndarray, what: str, batch: int) -> np.ndarray:
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[0] != batch:
        raise ValueError(f"Evaluator.update: {what} must be [B, H, W] with B={batch}, got {x.shape}.")
    return x


class Evaluator:
    """Collects per-category predictions and computes exact image and pixel metrics.

    Typical use: ``update`` per batch, ``compute_category`` at the end of a category, ``release`` to
    free its pixel data, ``macro_mean`` at the end. ``compute()`` computes every category seen and
    returns the metrics per category.

    Degenerate categories are reported as absent (``None``), never as 0 or 0.5: image metrics when
    the labels are all of one class, pixel metrics when the category has no masks (``masks=None``),
    its masks are all empty, or ``compute_pixel`` is off. Macro means skip absent values.

    Args:
        compute_pixel: Store maps and masks and compute pixel metrics.
        pro_fpr_limit: Upper FPR bound of the AUPRO integral.
        aupro: ``exact`` (default) or ``official``, see
            :func:`~anomaly_vlm.metrics.functional.official_aupro`.
    """

    def __init__(self, compute_pixel: bool = True, pro_fpr_limit: float = 0.3, aupro: str = "exact") -> None:
        if not 0.0 < pro_fpr_limit <= 1.0:
            raise ValueError(f"pro_fpr_limit must be in (0, 1], got {pro_fpr_limit}.")
        if aupro not in AUPRO_VARIANTS:
            raise ValueError(f"metrics.aupro={aupro!r} is not one of {list(AUPRO_VARIANTS)}")
        self.aupro = aupro
        self.compute_pixel = compute_pixel
        self.pro_fpr_limit = pro_fpr_limit
        # Category -> its arrays (lists of parts) and counts, in order of first appearance.
        self._data: dict[str, dict[str, Any]] = {}
        self._released: set[str] = set()
        self._warned_mixed: set[str] = set()
        self._results: dict[str, dict[str, float | None]] = {}

    @property
    def categories(self) -> list[str]:
        """Categories seen by ``update``, in order of first appearance."""
        return list(self._data)

    @property
    def results(self) -> dict[str, dict[str, float | None]]:
        """Metrics per category, filled by :meth:`compute_category`."""
        return self._results

    def reset(self) -> None:
        """Forgets all stored data and results."""
        self._data.clear()
        self._released.clear()
        self._warned_mixed.clear()
        self._results.clear()

    def _add_category(self, category: str) -> None:
        self._data[category] = {
            **{name: [] for name in _CAT_STATES},
            **dict.fromkeys(_SUM_STATES, 0),
        }

    def _get(self, category: str, name: str) -> Any:
        return self._data[category][name]

    def _set(self, category: str, name: str, value: Any) -> None:
        self._data[category][name] = value

    def _count(self, category: str, name: str) -> int:
        return int(self._get(category, name))

    def _add(self, category: str, name: str, value: int) -> None:
        self._set(category, name, self._get(category, name) + value)

    def update(
        self,
        category: str,
        image_scores: Any,
        labels: Any,
        anomaly_maps: Any | None = None,
        masks: Any | None = None,
    ) -> None:
        """Adds one batch of predictions of a category.

        Args:
            category: Category name.
            image_scores: ``[B]`` image scores (tensor or array).
            labels: ``[B]`` 0/1 image labels.
            anomaly_maps: ``[B, H, W]`` (or ``[B, 1, H, W]``) float maps, or ``None``.
            masks: ``[B, H, W]`` (or ``[B, 1, H, W]``) bool/0-1 masks, or ``None`` if the test set
                has no masks.

        Raises:
            ValueError: On malformed shapes, non-binary labels, NaN, or an update after ``release``.
        """
        known = category in self._data
        if category in self._released:
            raise ValueError(f"Evaluator.update: category {category!r} was already released.")
        scores = to_numpy(image_scores).astype(np.float64).reshape(-1)
        batch = scores.size
        lab = to_numpy(labels).reshape(-1)
        if lab.size != batch:
            raise ValueError(f"Evaluator.update: {lab.size} labels for {batch} image scores.")
        if lab.dtype != bool and not np.isin(lab, (0, 1)).all():
            raise ValueError("Evaluator.update: labels must be 0/1 (or bool).")
        if np.isnan(scores).any():
            raise ValueError(f"Evaluator.update: NaN image score in category {category!r}.")
        has_pixels = self.compute_pixel and anomaly_maps is not None and masks is not None
        part = None
        if has_pixels:
            maps = _squeeze_channel(to_numpy(anomaly_maps), "anomaly_maps", batch)
            gt = _squeeze_channel(to_numpy(masks), "masks", batch)
            if not known or self._count(category, "images_without_pixels") == 0:
                part = ScoreSplit.from_maps(maps, gt)

        # Validation is over: nothing is stored for a batch that raised.
        if not known:
            self._add_category(category)
        self._get(category, "scores").append(scores)
        self._get(category, "labels").append(lab.astype(np.uint8))
        if not self.compute_pixel:
            return
        if has_pixels:
            if part is not None:
                self._get(category, "negatives").append(part.negatives)
                self._get(category, "positives").append(part.positives)
                self._get(category, "region_sizes").append(part.region_sizes)
                self._add(category, "num_regions", part.num_regions)
            self._add(category, "images_with_pixels", batch)
        else:
            self._add(category, "images_without_pixels", batch)
            self._drop_pixels(category)  # the category can no longer have pixel metrics
        if (
            self._count(category, "images_with_pixels")
            and self._count(category, "images_without_pixels")
            and category not in self._warned_mixed
        ):
            self._warned_mixed.add(category)
            warnings.warn(
                f"Evaluator: category {category!r} has maps and masks for only some images; "
                "its pixel metrics are reported as absent.",
                stacklevel=2,
            )

    def _drop_pixels(self, category: str) -> None:
        for name in ("negatives", "positives", "region_sizes"):
            self._set(category, name, [])
        self._set(category, "num_regions", 0)

    def _check_known(self, category: str) -> None:
        if category not in self._data:
            raise ValueError(f"Evaluator: no data for category {category!r}.")

    def _joined(self, category: str, name: str) -> np.ndarray:
        """A stored array, its parts joined once (a second compute re-uses the joined array)."""
        parts = self._get(category, name)
        if not parts:
            return np.zeros(0, _DTYPES[name])
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    def stored_image_scores(self, category: str) -> np.ndarray:
        """The image scores of a category as stored by ``update`` (float64, ``[N]``)."""
        self._check_known(category)
        return self._joined(category, "scores")

    def stored_labels(self, category: str) -> np.ndarray:
        """The image labels of a category (int64 0/1, ``[N]``)."""
        self._check_known(category)
        return self._joined(category, "labels").astype(np.int64)

    def compute(self) -> dict[str, dict[str, float | None]]:
        """Computes every category seen (see :meth:`compute_category`); returns :attr:`results`."""
        for category in self._data:
            self._results[category] = self._metrics(category, None)
        return dict(self._results)

    def compute_category(self, category: str, image_scores: Any | None = None) -> dict[str, float | None]:
        """Computes the metrics of one category and records them in :attr:`results`.

        Args:
            category: Category name.
            image_scores: Optional ``[N]`` scores replacing the stored image scores, e.g. after a
                per-category rescaling; must have one score per stored image, in update order.

        Returns:
            The seven metrics of :data:`METRIC_NAMES`, fractions in ``[0, 1]`` or ``None`` if absent.

        Raises:
            ValueError: For an unknown category or an override of the wrong length.
        """
        self._check_known(category)
        out = self._metrics(category, image_scores)
        self._results[category] = out
        return out

    def _metrics(self, category: str, image_scores: Any | None) -> dict[str, float | None]:
        labels = self.stored_labels(category)
        if image_scores is None:
            scores = self.stored_image_scores(category)
        else:
            scores = to_numpy(image_scores).astype(np.float64).reshape(-1)
            if scores.size != labels.size:
                raise ValueError(
                    f"compute_category: {scores.size} override scores for {labels.size} images "
                    f"of category {category!r}."
                )
        out: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)

        if labels.size and 0 < labels.sum() < labels.size:
            m = ranking_metrics(ScoreSplit.from_labels(scores, labels))
            out.update(image_auroc=m["auroc"], image_ap=m["ap"], image_f1max=m["f1max"])
        else:
            warnings.warn(
                f"Evaluator: category {category!r} has only one image class "
                f"({int(labels.sum())} anomalous of {labels.size}); image metrics are absent.",
                stacklevel=3,
            )

        if category in self._released:
            # Pixel data are gone; keep what was computed before the release (image scores may be
            # recomputed, e.g. after a rescaling).
            previous = self._results.get(category, {})
            out.update({k: previous.get(k) for k in METRIC_NAMES if k.startswith("pixel_")})
        elif self._count(category, "images_with_pixels") and not self._count(
            category, "images_without_pixels"
        ):
            # Views of the states: sorting the split (in ranking_metrics) sorts them in place once.
            split = ScoreSplit(
                negatives=self._joined(category, "negatives"),
                positives=self._joined(category, "positives"),
                region_sizes=self._joined(category, "region_sizes"),
                num_regions=self._count(category, "num_regions"),
            )
            if split.positives.size and split.negatives.size:
                exact = self.aupro == "exact"
                m = ranking_metrics(split, pro_fpr_limit=self.pro_fpr_limit if exact else None)
                pro = m["aupro"] if exact else official_aupro(split, fpr_limit=self.pro_fpr_limit)
                if not math.isfinite(pro):
                    warnings.warn(
                        f"Evaluator: category {category!r}: the official AUPRO is undefined "
                        "(constant maps or a single FPR point below the limit); reported as absent.",
                        stacklevel=3,
                    )
                out.update(
                    pixel_auroc=m["auroc"],
                    pixel_ap=m["ap"],
                    pixel_f1max=m["f1max"],
                    pixel_aupro=pro if math.isfinite(pro) else None,
                )
        return out

    def release(self, category: str) -> None:
        """Frees the stored pixel data of a category.

        Image scores, labels and results are kept; a later :meth:`compute_category` of the category
        recomputes the image metrics and carries over the pixel metrics computed before the release.
        """
        self._check_known(category)
        self._drop_pixels(category)
        self._released.add(category)

    def stored_nbytes(self) -> int:
        """Bytes held by the stored pixel data and image scores of all categories."""
        total = 0
        for category in self._data:
            for name in _CAT_STATES:
                total += sum(part.nbytes for part in self._get(category, name))
        return total

    def macro_mean(self) -> dict[str, float | None]:
        """Mean of each metric over the computed categories that have it (``None`` if none has).

        Returns:
            One value per name in :data:`METRIC_NAMES`.
        """
        out: dict[str, float | None] = {}
        for name in METRIC_NAMES:
            values = [r[name] for r in self._results.values() if r.get(name) is not None]
            out[name] = math.fsum(values) / len(values) if values else None
        return out
