"""Reading images and masks the way CLIP was trained to see them.

CLIP preprocessing (METHODS.md): squash to a square with bicubic interpolation (antialiased), no
crop. Masks follow the image geometry: binarised (> 0, so label-valued VisA masks work), resized
bilinearly to the same square, then thresholded at 0.5. A mask path may also be a folder holding several
mask files of one image (MVTec LOCO: one file per defect region); they are fused by a pixel-wise OR.

Every image or mask file is opened through :func:`open_image`, which reads the header only and refuses a
file over ``data.max_image_pixels`` before a pixel is decoded: a PNG of a few kilobytes can claim
100000x100000 pixels (a decompression bomb) and would otherwise take tens of gigabytes to decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch import Tensor

# Fail on truncated files instead of silently reading grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PIL's own bomb check (a warning above ~89 MP, an error above ~179 MP) would overrule the configured
# limit both ways: refuse a large scan someone allowed, or only warn below 179 MP. The project's limit,
# checked in open_image on every image it opens, is the one that counts.
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Default of ``data.max_image_pixels``: 100 megapixels is above any benchmark image (Real-IAD raw,
#: ~5 MP; MVTec AD 2, ~10 MP) and any industrial camera in use, and decodes to at most 300 MB of RGB.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
#: The config key that sets the limit (named in every refusal so it can be raised knowingly).
MAX_IMAGE_PIXELS_KEY = "data.max_image_pixels"


class DataError(RuntimeError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files of a folder (any case of extension), sorted by path.

    Hidden files are skipped, and with ``recursive`` also everything in hidden folders (``.thumbnails``,
    ``.ipynb_checkpoints``), as no reader lists them. A folder that does not exist has no images.

    Args:
        folder: where to look.
        recursive: also list the images of its subfolders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file()
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def check_max_pixels(value: object, key: str = MAX_IMAGE_PIXELS_KEY) -> int | None:
    """``data.max_image_pixels`` as a positive int, or None (no limit).

    Raises:
        DataError: anything else, naming ``key``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise DataError(f"{key}={value!r} must be a positive number of pixels (width x height) or null")
    return int(value)


def open_image(
    path: str | Path,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    what: str = "image",
    key: str = MAX_IMAGE_PIXELS_KEY,
) -> Image.Image:
    """Open an image file lazily (header only), refusing it when it has more than ``max_pixels`` pixels.

    Pixels are decoded later, by ``load()`` or the first access; PIL's ``Image.open`` reads the header
    only, so a decompression bomb is refused here without allocating its pixels.

    Args:
        path: the file.
        max_pixels: the most ``width * height`` allowed (``data.max_image_pixels``); None: no limit.
        what: how errors name the file (``image``, ``mask``, ``texture``).
        key: the config key of the limit, named in the refusal (``train_data.max_image_pixels``).

    Returns:
        The opened, not yet decoded :class:`PIL.Image.Image` (close it, or use it as a context manager).

    Raises:
        DataError: the file is missing, not an image, or over the limit; the message names the file.
    """
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise DataError(f"{what} file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read {what} {path}: {error}") from error
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise DataError(
            f"{what} {path} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} ({key}); refused before decoding (a small file that claims this many "
            f"pixels is a decompression bomb). Raise {key} if the image is real"
        )
    return image


def _open(
    path: str | Path,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    what: str = "image",
    key: str = MAX_IMAGE_PIXELS_KEY,
) -> Image.Image:
    """:func:`open_image`, then decode the pixels."""
    image = open_image(path, max_pixels, what, key)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        raise DataError(f"cannot read {what} {path}: {error}") from error
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


#: ``datamodule.geometry``: how a file becomes the model input. ``squash`` (every method's default: both
#: sides to ``image_size``, the aspect ratio lost) or ``shorter_side`` (AnomalyDINO's official
#: preprocessing: the shorter side to ``image_size`` keeping the aspect ratio, then the bottom and right
#: cropped to a multiple of ``datamodule.crop_multiple``, so a non-square file gives a non-square input).
GEOMETRIES: tuple[str, ...] = ("squash", "shorter_side")


def check_geometry(geometry: str, multiple: int = 1) -> None:
    """Refuse an unknown ``datamodule.geometry`` or a ``crop_multiple`` below 1 (:class:`DataError`)."""
    if geometry not in GEOMETRIES:
        raise DataError(f"datamodule.geometry={geometry!r} is not one of {list(GEOMETRIES)}")
    if isinstance(multiple, bool) or int(multiple) != multiple or multiple < 1:
        raise DataError(f"datamodule.crop_multiple={multiple!r} must be a positive integer")


def input_geometry(
    width: int, height: int, size: int | None, geometry: str = "squash", multiple: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((resized width, height), (cropped width, height))`` of a ``width x height`` file.

    ``shorter_side`` rounds the longer side as torchvision's ``Resize(size)`` does (``int(size * long /
    short)``), the official AnomalyDINO transform, and crops the bottom and right to multiples of
    ``multiple`` (its crop to the patch size). ``size`` None keeps the file's resolution, uncropped.
    """
    if size is None:  # the file's own pixels, uncropped (a method resizes them later, as the loader would)
        return (width, height), (width, height)
    if geometry == "squash":
        resized = (size, size)
    else:
        short, long = min(width, height), max(width, height)
        other = int(size * long / short)
        resized = (size, other) if width <= height else (other, size)
    if geometry == "squash":
        return resized, resized
    return resized, (resized[0] - resized[0] % multiple, resized[1] - resized[1] % multiple)


def _squashed(image: Image.Image, size: int | None, geometry: str = "squash", multiple: int = 1) -> Tensor:
    # The one resize of the data layer (PIL's antialiased bicubic on the 8-bit RGB image), shared by
    # load_image and resize_image so that both give the same pixels.
    resized, (width, height) = input_geometry(*image.size, size, geometry, multiple)
    if image.size != resized:
        image = image.resize(resized, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return pixels[:, :height, :width].contiguous()


def load_image(
    path: str,
    size: int | None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    geometry: str = "squash",
    multiple: int = 1,
) -> Tensor:
    """``[3, size, size]`` float RGB in ``[0, 1]``, bicubic squash-resized (``geometry="squash"``).

    Args:
        path: the image file.
        size: the square side (``shorter_side``: the shorter side); None keeps the file's own resolution
            (``[3, H, W]``).
        max_pixels: refuse a file with more pixels (``data.max_image_pixels``), before decoding it.
        geometry: ``squash`` or ``shorter_side`` (:data:`GEOMETRIES`, :func:`input_geometry`).
        multiple: ``shorter_side`` crops the bottom and right to multiples of it.

    Raises:
        DataError: the file is missing, unreadable or over ``max_pixels``.
    """
    return _squashed(to_rgb(_open(path, max_pixels)), size, geometry, multiple)


def resize_image(image: Tensor, size: int, geometry: str = "squash", multiple: int = 1) -> Tensor:
    """A ``[3, H, W]`` image of 8-bit values in ``[0, 1]`` (as :func:`load_image` gives them) resized the way
    :func:`load_image` resizes a file: ``resize_image(load_image(p, None), s, g, m)`` equals
    ``load_image(p, s, geometry=g, multiple=m)``.

    Methods that change the file's pixels before the resize (AnomalyDINO turns its references at their
    original resolution) use it to finish them as the loader would.
    """
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    resized = _squashed(Image.fromarray(pixels.permute(1, 2, 0).numpy()), size, geometry, multiple)
    return resized.to(device=image.device, dtype=image.dtype)


def mask_files(path: str | Path) -> list[Path]:
    """The mask files behind a mask path: the file itself, or every image file of a mask folder."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = list_images(path)
    if not files:
        raise DataError(f"mask folder holds no mask images: {path}")
    return files


def _binary(path: Path, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    mask = _open(path, max_pixels, what="mask")
    binary = np.asarray(mask.convert("L") if mask.mode not in {"L", "I", "I;16", "F", "1"} else mask) > 0
    if binary.ndim == 3:
        binary = binary.any(axis=-1)
    return binary, mask.size


def mask_is_empty(path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Whether a mask file marks no pixel (KolektorSDD/KSDD2 ship an all-black mask for normal images).

    A mask over ``max_pixels`` (``data.max_image_pixels``) is refused before decoding (:class:`DataError`).
    """
    with open_image(path, max_pixels, what="mask") as mask:
        try:
            return not np.asarray(mask.convert("L")).any()
        except OSError as error:
            raise DataError(f"cannot read mask {path}: {error}") from error


def load_mask(
    path: str,
    size: int | None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    geometry: str = "squash",
    multiple: int = 1,
) -> tuple[Tensor, tuple[int, int]]:
    """Binary ``[size, size]`` float mask and the file's original (width, height).

    ``path`` may be a folder of masks of the same image; their union is returned. A mask file with more
    than ``max_pixels`` pixels (``data.max_image_pixels``) is refused before decoding (:class:`DataError`).
    ``size`` None: the mask at its file's resolution (the full-resolution ground truth); ``geometry`` and
    ``multiple``: resized and cropped as :func:`load_image` resizes its image.
    """
    parts = [_binary(file, max_pixels) for file in mask_files(path)]
    original_size = parts[0][1]
    binary = parts[0][0]
    for other, other_size in parts[1:]:
        if other_size != original_size:
            raise DataError(f"masks in {path} differ in size: {original_size} and {other_size}")
        binary = binary | other
    if size is None:
        return torch.from_numpy(binary.astype(np.float32)), original_size
    resized_size, (width, height) = input_geometry(*binary.shape[::-1], size, geometry, multiple)
    resized = Image.fromarray(binary.astype(np.float32)).resize(resized_size, Image.Resampling.BILINEAR)
    mask = torch.from_numpy((np.asarray(resized) > 0.5).astype(np.float32))
    return mask[:height, :width].contiguous(), original_size


def image_size_of(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) without decoding pixels (a file over ``max_pixels`` is refused all the same)."""
    with open_image(path, max_pixels) as image:
        return image.size
