"""Per-image decisions of ``mode=predict``: ok/defect, the defect area fraction, a binary mask PNG."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image

from anomaly_vlm.callbacks.scoring import CategoryResult
from anomaly_vlm.decisions.thresholds import CategoryThresholds

MASK_DIR = "masks"


@dataclasses.dataclass
class ImageDecision:
    """One image's decision.

    Attributes:
        decision: ``ok`` or ``defect`` (image score above the image threshold).
        defect_area: fraction of map pixels above the pixel threshold (None without one).
        mask: ``[H, W]`` bool mask of those pixels (None without a pixel threshold).
    """

    decision: str
    defect_area: float | None
    mask: np.ndarray | None


def decide(score: float, anomaly_map: np.ndarray, thresholds: CategoryThresholds) -> ImageDecision:
    """The decision of one image at a category's thresholds (defect iff value > threshold)."""
    mask = None if thresholds.pixel is None else anomaly_map > thresholds.pixel
    return ImageDecision(
        "defect" if float(score) > thresholds.image else "ok",
        None if mask is None else float(mask.mean()),
        mask,
    )


def save_mask(mask: np.ndarray, path: Path) -> None:
    """A binary mask as an 8-bit PNG (0 = ok, 255 = defect), at the model input size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


class DecisionWriter:
    """Decides every scored image and writes its binary mask; keeps the decisions for ``scores.csv``.

    Args:
        thresholds: per category; a category without thresholds gets no decision.
        mask_dir: folder of the mask PNGs (None: none written).
        name_of: image path -> file name stem (the heatmap naming of the prediction run).
    """

    images_wanted = 0

    def __init__(self, thresholds: dict[str, CategoryThresholds], mask_dir: Path | None, name_of) -> None:
        self.thresholds = thresholds
        self.mask_dir = mask_dir
        self.name_of = name_of
        self.decisions: dict[str, ImageDecision] = {}

    def consume(self, result: CategoryResult, trainer: L.Trainer | None) -> None:
        chosen = self.thresholds.get(result.category)
        if chosen is None:
            return
        scores = result.prediction.image_score.double().numpy()
        maps = result.prediction.anomaly_map.numpy()
        for index, path in enumerate(result.paths):
            decision = decide(scores[index], maps[index], chosen)
            if self.mask_dir is not None and decision.mask is not None:
                save_mask(decision.mask, self.mask_dir / f"{self.name_of(path, result.paths)}.png")
            self.decisions[path] = dataclasses.replace(decision, mask=None)
