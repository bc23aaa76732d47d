"""Reading images and masks the way CLIP was trained to see them.

CLIP preprocessing (METHODS.md): squash to a square with bicubic interpolation (antialiased), no
crop. Masks follow the image geometry: binarised (> 0, so label-valued VisA masks work), resized
bilinearly to the same square, then thresholded at 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch import Tensor

# Fail on truncated files instead of silently reading grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(RuntimeError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


def _open(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as error:
        raise DataError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, palette, RGBA, 16-bit, float) to 8-bit RGB."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        # 16-bit PNGs use the full range; float/int images are scaled by their own maximum.
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            peak = max(float(array.max()), 1e-12)
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "RGBa", "La", "PA"}:
        # Transparent pixels become black (composited, as the README documents): convert("RGB") would
        # keep whatever colour hides under alpha 0, which is arbitrary. The benchmark datasets have no
        # alpha channel, so their pixel values are unchanged.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str, size: int) -> Tensor:
    """``[3, size, size]`` float RGB in ``[0, 1]``, bicubic squash-resized."""
    image = to_rgb(_open(path))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_mask(path: str, size: int) -> tuple[Tensor, tuple[int, int]]:
    """Binary ``[size, size]`` float mask and the file's original (width, height)."""
    mask = _open(path)
    original_size = mask.size
    binary = np.asarray(mask.convert("L") if mask.mode not in {"L", "I", "I;16", "F", "1"} else mask) > 0
    if binary.ndim == 3:
        binary = binary.any(axis=-1)
    resized = Image.fromarray(binary.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy((np.asarray(resized) > 0.5).astype(np.float32)), original_size


def image_size_of(path: str) -> tuple[int, int]:
    """(width, height) without decoding pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error
