"""Uploaded bytes -> the ``[3, S, S]`` tensor :func:`~anomaly_vlm.data.image_io.load_image` makes of a file.

Everything a client sends is hostile until decoded: only the raster formats a camera writes are opened
(PIL would otherwise pick a plugin by the bytes, EPS among them, which runs Ghostscript); the pixel count
is checked on the header before a pixel is decoded (a few-kilobyte PNG can claim 10^10 pixels); a file
that ends early is refused instead of being read as grey. The bytes are decoded from memory, never from a
path.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from anomaly_vlm.data.image_io import to_rgb

#: The formats the service opens (PIL format names).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Content types of raw-body uploads, and those a multipart part may declare (or leave generic).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/webp")
GENERIC_TYPES = ("application/octet-stream", "")


class ImageRejected(ValueError):
    """An upload that is not a usable image.

    Attributes:
        status: 415 (not an image of a supported format) or 422 (an image, but truncated, corrupt or over
            the pixel limit).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, size: int, max_pixels: int, name: str = "image") -> Tensor:
    """``[3, size, size]`` float RGB in ``[0, 1]``, bicubic squash-resized, as the detector's run read files.

    Args:
        data: the uploaded bytes.
        size: the detector's input side.
        max_pixels: most ``width * height``, checked before decoding.
        name: how errors name the upload (its file name).

    Raises:
        ImageRejected: 415 for bytes that are not a PNG/JPEG/BMP/TIFF/WebP image, 422 for one that is
            truncated, corrupt, or has more than ``max_pixels`` pixels.
    """
    if not data:
        raise ImageRejected(422, f"{name}: empty upload")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(
            415, f"{name}: not an image of a supported format ({', '.join(FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(422, f"{name}: unreadable image header: {error}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(
                422,
                f"{name}: {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                "(max_image_pixels); refused before decoding",
            )
        if getattr(image, "n_frames", 1) > 1:
            raise ImageRejected(422, f"{name}: holds {image.n_frames} frames; send one image per file")
        try:
            image.load()
            rgb = to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageRejected(422, f"{name}: truncated or corrupt {image.format} image: {error}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def safe_name(name: str | None, index: int) -> str:
    """A client's file name as a label only: the last path component, printable, at most 200 characters.

    It is echoed in the response and never used to open or write anything.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(char for char in base if char.isprintable())[:200]
    return base or f"image-{index}"
