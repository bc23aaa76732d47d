"""Test-time corruptions (``datamodule.test_corruption``): the nuisances a deployed detector meets.

Rotation, brightness and contrast, Gaussian blur, JPEG quality and Gaussian noise, each at three
strengths, built with albumentations and applied to the test images at the model input size (so a
strength means the same to every backbone and input size). Each image's random draws (the sign of a
rotation or brightness change, the noise) come from ``seed`` and the image's place in its dataset
(category, defect folder, file name), never from a global generator: every method, worker count and
batch size sees exactly the same corrupted pixels. Geometric corruptions move the mask with the image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anomaly_vlm.data.image_io import DataError

#: Strengths 1, 2, 3 of each corruption (magnitudes at the model input size).
STRENGTHS: dict[str, tuple[float, float, float]] = {
    "rotation": (5.0, 15.0, 30.0),  # degrees, sign drawn per image
    "brightness_contrast": (0.1, 0.25, 0.4),  # brightness and contrast change, sign drawn per image
    "blur": (1.0, 2.0, 4.0),  # Gaussian sigma in pixels
    "jpeg": (50.0, 20.0, 5.0),  # JPEG quality
    "noise": (0.04, 0.08, 0.16),  # Gaussian noise std as a fraction of the intensity range
}
CORRUPTIONS: tuple[str, ...] = tuple(STRENGTHS)


def _transform(kind: str, magnitude: float, sign: float):
    # Imported here: only corrupted test runs need them, every other job imports the datamodule.
    import albumentations as A
    import cv2

    if kind == "rotation":
        angle = sign * magnitude
        return A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_REFLECT_101, p=1.0)
    if kind == "brightness_contrast":
        change = sign * magnitude
        return A.RandomBrightnessContrast(
            brightness_limit=(change, change), contrast_limit=(change, change), p=1.0
        )
    if kind == "blur":
        return A.GaussianBlur(blur_limit=0, sigma_limit=(magnitude, magnitude), p=1.0)
    if kind == "jpeg":
        quality = int(magnitude)
        return A.ImageCompression(compression_type="jpeg", quality_range=(quality, quality), p=1.0)
    return A.GaussNoise(std_range=(magnitude, magnitude), p=1.0)


@dataclass(frozen=True)
class Corruption:
    """One corruption at one strength, seeded.

    Args:
        kind: one of :data:`CORRUPTIONS`.
        strength: 1, 2 or 3 (:data:`STRENGTHS`).
        seed: seeds each image's draws, with the image's place in its dataset.

    Raises:
        DataError: an unknown kind or strength (a user's config value).
    """

    kind: str
    strength: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in STRENGTHS:
            raise DataError(
                f"datamodule.test_corruption={self.kind} is not a corruption; choose one of "
                f"{', '.join(CORRUPTIONS)} (or null for none)"
            )
        if self.strength not in (1, 2, 3):
            raise DataError(f"datamodule.test_corruption_strength={self.strength} must be 1, 2 or 3")

    @property
    def magnitude(self) -> float:
        return STRENGTHS[self.kind][self.strength - 1]

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.strength}"

    def image_seed(self, path: str, category: str) -> int:
        """The seed of one image: from the seed, the category and the image's last two path parts, so the
        same image gets the same draw wherever its dataset lies."""
        where = Path(path)
        key = f"{self.seed}/{self.kind}/{self.strength}/{category}/{where.parent.name}/{where.name}"
        return zlib.crc32(key.encode())

    def __call__(
        self, image: Tensor, mask: Tensor | None, path: str, category: str
    ) -> tuple[Tensor, Tensor | None]:
        """The corrupted ``[3, S, S]`` image in ``[0, 1]`` and its ``[S, S]`` mask (moved with the image).

        Args:
            image: ``[3, S, S]`` float RGB in ``[0, 1]``.
            mask: ``[S, S]`` binary mask, or None.
            path, category: the image's file and category (they seed its draws).
        """
        import albumentations as A

        seed = self.image_seed(path, category)
        sign = 1.0 if np.random.default_rng(seed).random() < 0.5 else -1.0
        pipeline = A.Compose([_transform(self.kind, self.magnitude, sign)], seed=seed)
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
        inputs = {"image": pixels}
        if mask is not None:
            inputs["mask"] = mask.numpy().astype(np.uint8)
        out = pipeline(**inputs)
        corrupted = torch.from_numpy(out["image"].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
        moved = None if mask is None else torch.from_numpy(out["mask"].astype(np.float32)).to(mask.dtype)
        return corrupted, moved


def corruption_from(kind: str | None, strength: int = 1, seed: int = 0) -> Corruption | None:
    """The corruption the datamodule settings name (None: clean test images)."""
    if kind in (None, "", "none", "null"):
        return None
    return Corruption(str(kind), int(strength), int(seed))
