"""Defects made on normal images, with their masks: CutPaste patches and DRAEM texture blends.

Two kinds, after the papers that introduced them for anomaly detection:

* ``cutpaste`` (CutPaste, Li et al., CVPR 2021): a rectangle of the image itself, or of another normal
  image, with an area of ``patch_area`` of the image and a log-uniform aspect ratio in ``patch_aspect``,
  colour-jittered (0.1 as in the paper) and, half of the time, rotated by up to 45 degrees (the "scar"
  variant's rotation), is pasted at a random place.
* ``texture`` (DRAEM, Zavrtanik et al., ICCV 2021): a Perlin noise field with ``2^k`` lattice cells per axis
  (``k`` uniform in ``perlin_scale``, DRAEM's ``[0, 6)``), thresholded at ``threshold`` (DRAEM: 0.5), shapes
  the defect; inside it a foreign texture, randomly cropped and put through three random photometric or
  geometric changes, is blended with weight ``opacity`` (DRAEM's ``1 - beta``, ``beta`` in ``[0, 0.8)``).

The augmentations of the pasted patch and of the texture are albumentations pipelines. Every draw comes
from a generator seeded by ``(seed, epoch, index)``: the same options give the same defects, whatever
the number of loader workers, and every epoch sees new ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_vlm.data.defect_synthesis.noise import perlin_noise
from anomaly_vlm.data.defect_synthesis.textures import (
    OTHER_CATEGORIES,
    TEXTURE_LIMIT_KEY,
    load_texture,
    resolve_textures,
)
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError, check_max_pixels

KINDS: tuple[str, ...] = ("cutpaste", "texture")

#: A defect must change at least this fraction of its mask's pixels (a patch pasted onto a region
#: it resembles, or a faint blend, is drawn again), so the mask is what changed.
MIN_CHANGED_FRACTION = 0.5
#: and cover at least this fraction of the image.
MIN_AREA_FRACTION = 0.001
#: Draws of one defect before giving up on an image (e.g. a flat image that no patch of itself changes).
ATTEMPTS = 10
#: Noise fields drawn per texture attempt until one exceeds the threshold somewhere.
NOISE_ATTEMPTS = 30
#: A pixel changed when it moved by more than half a grey level.
_CHANGED = 0.5 / 255.0

#: ``donor(other_category)``: another normal training image (``[H, W, 3]`` float in ``[0, 1]``, the
#: image's size), of another category when ``other_category`` is true; None when there is none.
Donor = Callable[[bool], "np.ndarray | None"]


@dataclass
class Synthesized:
    """One synthesized defect.

    Attributes:
        image: ``[H, W, 3]`` float32 in ``[0, 1]``; equal to the input outside ``mask``.
        mask: ``[H, W]`` bool, where the defect is.
        kind: ``cutpaste`` or ``texture``.
    """

    image: np.ndarray
    mask: np.ndarray
    kind: str


def _pair(key: str, value: Any, low: float, high: float, integer: bool = False) -> tuple[float, float]:
    """A ``[min, max]`` option within ``[low, high]``."""
    try:
        first, second = (float(item) for item in value)
    except (TypeError, ValueError):
        raise DataError(f"train_data.synthesis.{key}={value!r} must be two numbers [min, max]") from None
    if integer and not (first.is_integer() and second.is_integer()):
        raise DataError(f"train_data.synthesis.{key}={[first, second]} must be two whole numbers")
    if not low <= first <= second <= high:
        raise DataError(
            f"train_data.synthesis.{key}={[first, second]} must satisfy {low} <= min <= max <= {high}"
        )
    return first, second


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


class AnomalySynthesizer:
    """Turns normal images into anomalous ones with masks (``train_data.synthesize_anomalies=true``).

    Args:
        kinds: defect kinds drawn uniformly per defect: ``cutpaste`` and/or ``texture``.
        probability: chance that a normal training image becomes a synthesized defect, drawn anew each
            epoch (the rest stay normal, so the model also sees clean images).
        seed: seed of every draw (with the epoch and the item's index).
        textures: texture sources of ``texture`` defects: image files, folders (e.g. DTD's images, as
            DRAEM used), names of scikit-image photos, ``other_categories`` (normal images of the other
            training categories); None = bundled scikit-image photos
            (:data:`~anomaly_vlm.data.defect_synthesis.textures.DEFAULT_TEXTURES`).
        patch_area: ``cutpaste`` patch area as a fraction of the image (CutPaste: 0.02-0.15).
        patch_aspect: ``cutpaste`` aspect-ratio range, drawn log-uniformly (CutPaste: 0.3-3.3).
        other_image: chance that a ``cutpaste`` patch comes from another normal image, not the same one.
        perlin_scale: ``texture`` lattice cells per axis = ``2^k``, ``k`` uniform in ``[min, max)``.
        threshold: ``texture`` noise threshold; the noise lies in about ``[-0.71, 0.71]``.
        opacity: ``texture`` weight of the foreign texture inside the defect.
        max_image_pixels: refuse a texture file with more pixels, before decoding it (the config
            interpolates ``train_data.max_image_pixels``); None: no limit.

    Raises:
        DataError: an option out of range or an unknown kind, naming ``train_data.synthesis.<key>``.
    """

    def __init__(
        self,
        kinds: Sequence[str] = KINDS,
        probability: float = 0.5,
        seed: int = 0,
        textures: Sequence[str] | None = None,
        patch_area: Sequence[float] = (0.02, 0.15),
        patch_aspect: Sequence[float] = (0.3, 3.3),
        other_image: float = 0.5,
        perlin_scale: Sequence[int] = (0, 6),
        threshold: float = 0.5,
        opacity: Sequence[float] = (0.2, 1.0),
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if isinstance(kinds, str):
            kinds = [kinds]
        kinds = [str(kind) for kind in kinds]
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds:
            raise DataError(
                f"train_data.synthesis.kinds={kinds}: "
                + (f"unknown kind '{unknown[0]}'" if unknown else "empty")
                + f"; choose from {', '.join(KINDS)}"
            )
        self.kinds = tuple(dict.fromkeys(kinds))
        self.probability = float(probability)
        if not 0.0 < self.probability <= 1.0:
            raise DataError(
                f"train_data.synthesis.probability={probability} must be in (0, 1] (the chance that a "
                "normal image becomes a defect; to train without synthesis set "
                "train_data.synthesize_anomalies=false)"
            )
        if isinstance(seed, bool) or not float(seed).is_integer():
            raise DataError(f"train_data.synthesis.seed={seed!r} must be a whole number")
        self.seed = int(seed)
        self.patch_area = _pair("patch_area", patch_area, 1e-4, 0.5)
        self.patch_aspect = _pair("patch_aspect", patch_aspect, 0.05, 20.0)
        self.other_image = float(other_image)
        if not 0.0 <= self.other_image <= 1.0:
            raise DataError(f"train_data.synthesis.other_image={other_image} must be in [0, 1]")
        low, high = _pair("perlin_scale", perlin_scale, 0, 8, integer=True)
        if low == high:
            raise DataError(f"train_data.synthesis.perlin_scale={[int(low), int(high)]}: min must be < max")
        self.perlin_scale = (int(low), int(high))
        self.threshold = float(threshold)
        if not 0.0 <= self.threshold < 0.7:
            raise DataError(
                f"train_data.synthesis.threshold={threshold} must be in [0, 0.7) "
                "(Perlin noise peaks near 0.71)"
            )
        self.opacity = _pair("opacity", opacity, 0.0, 1.0)
        if self.opacity[1] <= 0.0:
            raise DataError(f"train_data.synthesis.opacity={list(self.opacity)}: max must be > 0")
        self.max_image_pixels = check_max_pixels(max_image_pixels, TEXTURE_LIMIT_KEY)
        self.texture_groups = resolve_textures(textures) if "texture" in self.kinds else []
        self._pipelines: dict[Any, Any] = {}

    # ----- albumentations pipelines ----------------------------------------------------------------
    def __getstate__(self) -> dict:
        # Loader workers rebuild the pipelines (albumentations objects hold generators of their own).
        return {**self.__dict__, "_pipelines": {}}

    def _pipeline(self, key: Any) -> Any:
        if key not in self._pipelines:
            self._pipelines[key] = self._build_pipeline(key)
        return self._pipelines[key]

    @staticmethod
    def _build_pipeline(key: Any) -> Any:
        # No version check over the network when albumentations is first imported.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        import cv2

        if key == "patch":
            return A.Compose(
                [
                    A.ColorJitter(
                        brightness=(0.9, 1.1),
                        contrast=(0.9, 1.1),
                        saturation=(0.9, 1.1),
                        hue=(-0.1, 0.1),
                        p=1.0,
                    ),
                    A.Affine(rotate=(-45, 45), fit_output=True, border_mode=cv2.BORDER_CONSTANT, p=0.5),
                ]
            )
        _, height, width = key
        # DRAEM's texture changes (gamma, brightness, sharpness, hue/saturation, solarize, posterize,
        # invert, autocontrast, equalize, rotation), three of them per texture.
        return A.Compose(
            [
                A.RandomResizedCrop(size=(height, width), scale=(0.1, 1.0), p=1.0),
                A.SomeOf(
                    [
                        A.RandomGamma(gamma_limit=(50, 200), p=1.0),
                        A.RandomBrightnessContrast(brightness_limit=0.12, contrast_limit=0.2, p=1.0),
                        A.Sharpen(p=1.0),
                        A.HueSaturationValue(
                            hue_shift_limit=50, sat_shift_limit=50, val_shift_limit=0, p=1.0
                        ),
                        A.Solarize(threshold_range=(0.125, 0.5), p=1.0),
                        A.Posterize(num_bits=(4, 6), p=1.0),
                        A.InvertImg(p=1.0),
                        A.AutoContrast(p=1.0),
                        A.Equalize(p=1.0),
                        A.Affine(rotate=(-45, 45), border_mode=cv2.BORDER_REFLECT_101, p=1.0),
                    ],
                    n=3,
                    p=1.0,
                ),
            ]
        )

    def _run(self, key: Any, rng: np.random.Generator, **targets: np.ndarray) -> dict:
        pipeline = self._pipeline(key)
        pipeline.set_random_seed(int(rng.integers(2**31 - 1)))
        return pipeline(**targets)

    # ----- defects ----------------------------------------------------------------------------------
    def __call__(
        self, image: np.ndarray, epoch: int, index: int, donor: Donor | None = None
    ) -> Synthesized | None:
        """A defect on ``image`` for training item ``index`` in ``epoch``, or None (it stays normal).

        Args:
            image: ``[H, W, 3]`` float in ``[0, 1]``.
            epoch, index: with ``seed``, the seed of every draw.
            donor: other normal training images (for ``cutpaste`` from another image and for the
                ``other_categories`` textures).

        Returns:
            None with probability ``1 - probability``, or when no attempt changed enough pixels (e.g. a
            flat image and patches of itself).
        """
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        if rng.random() >= self.probability:
            return None
        return self.synthesize(image, rng, donor)

    def synthesize(
        self, image: np.ndarray, rng: np.random.Generator, donor: Donor | None = None, kind: str | None = None
    ) -> Synthesized | None:
        """Always try to make a defect (``kind``, or one drawn from ``kinds``); None when every attempt
        failed."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
        first = kind or self.kinds[int(rng.integers(len(self.kinds)))]
        # The drawn kind first; the others only when it cannot change this image.
        for current in (first, *[other for other in self.kinds if other != first]):
            for _ in range(ATTEMPTS):
                made = (
                    self._cutpaste(image, rng, donor)
                    if current == "cutpaste"
                    else self._texture(image, rng, donor)
                )
                if made is not None and self._visible(image, made):
                    return Synthesized(made[0], made[1], current)
        return None

    @staticmethod
    def _visible(image: np.ndarray, made: tuple[np.ndarray, np.ndarray]) -> bool:
        result, mask = made
        area = int(mask.sum())
        if area < max(1, MIN_AREA_FRACTION * mask.size):
            return False
        changed = np.abs(result - image).max(axis=2) > _CHANGED
        return float(changed[mask].mean()) >= MIN_CHANGED_FRACTION

    def _cutpaste(
        self, image: np.ndarray, rng: np.random.Generator, donor: Donor | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        height, width = image.shape[:2]
        area = rng.uniform(*self.patch_area) * height * width
        aspect = math.exp(rng.uniform(math.log(self.patch_aspect[0]), math.log(self.patch_aspect[1])))
        patch_h = int(np.clip(round(math.sqrt(area * aspect)), 2, height))
        patch_w = int(np.clip(round(math.sqrt(area / aspect)), 2, width))
        source = image
        if donor is not None and rng.random() < self.other_image:
            other = donor(False)
            if other is not None:
                source = other
        top = int(rng.integers(0, height - patch_h + 1))
        left = int(rng.integers(0, width - patch_w + 1))
        patch = _to_uint8(source[top : top + patch_h, left : left + patch_w])
        out = self._run("patch", rng, image=patch, mask=np.ones(patch.shape[:2], np.uint8))
        patch, shape = out["image"], out["mask"] > 0
        # A rotated patch grows; keep its centre part when it no longer fits the image.
        patch_h, patch_w = min(patch.shape[0], height), min(patch.shape[1], width)
        off_y, off_x = (patch.shape[0] - patch_h) // 2, (patch.shape[1] - patch_w) // 2
        patch = patch[off_y : off_y + patch_h, off_x : off_x + patch_w]
        shape = shape[off_y : off_y + patch_h, off_x : off_x + patch_w]
        top = int(rng.integers(0, height - patch_h + 1))
        left = int(rng.integers(0, width - patch_w + 1))
        mask = np.zeros((height, width), dtype=bool)
        mask[top : top + patch_h, left : left + patch_w] = shape
        result = image.copy()
        result[mask] = patch[shape].astype(np.float32) / 255.0
        return result, mask

    def _texture(
        self, image: np.ndarray, rng: np.random.Generator, donor: Donor | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        height, width = image.shape[:2]
        low, high = self.perlin_scale
        mask = None
        for _ in range(NOISE_ATTEMPTS):
            cells = (2 ** int(rng.integers(low, high)), 2 ** int(rng.integers(low, high)))
            candidate = perlin_noise(height, width, cells, rng) > self.threshold
            if candidate.sum() >= max(1, MIN_AREA_FRACTION * candidate.size):
                mask = candidate
                break
        if mask is None:
            return None
        group = self.texture_groups[int(rng.integers(len(self.texture_groups)))]
        source = group[int(rng.integers(len(group)))]
        if source == OTHER_CATEGORIES:
            other = donor(True) if donor is not None else None
            if other is None:
                return None
            texture = _to_uint8(other)
        else:
            texture = load_texture(source, self.max_image_pixels)
        texture = self._run(("texture", height, width), rng, image=texture)["image"]
        opacity = np.float32(rng.uniform(*self.opacity))
        result = image.copy()
        blended = (1.0 - opacity) * image[mask] + opacity * (texture[mask].astype(np.float32) / 255.0)
        result[mask] = blended
        return result, mask

    def describe(self) -> dict[str, Any]:
        """The options, for logs and results."""
        return {
            "kinds": list(self.kinds),
            "probability": self.probability,
            "seed": self.seed,
            "textures": len(self.texture_groups),
        }
