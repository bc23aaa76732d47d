"""Checks that run before any weights load, so a bad file fails a job in seconds, not mid-run.

Every image (and mask) a job will read is opened once for its header (which also refuses a file over
``data.max_image_pixels``, a decompression bomb among them), and PNG, JPEG and BMP files are checked for
truncation by their last bytes (the end marker, or BMP's declared size) -- a few bytes
read per file instead of a full decode. A file whose ending looks wrong is fully decoded before it is
reported, so trailing bytes some cameras append never cause a false alarm.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_IMAGE_PIXELS_KEY,
    DataError,
    mask_files,
    open_image,
)

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


def _ending_looks_complete(path: Path, image_format: str | None) -> bool:
    size = path.stat().st_size
    with path.open("rb") as handle:
        if image_format == "PNG":
            handle.seek(max(size - len(_PNG_END), 0))
            return handle.read() == _PNG_END
        if image_format in ("JPEG", "MPO"):
            handle.seek(max(size - 2, 0))
            return handle.read() == _JPEG_END
        if image_format == "BMP":
            header = handle.read(6)
            return len(header) == 6 and struct.unpack("<I", header[2:6])[0] <= size
    return True


def check_image_file(
    path: str | Path,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    what: str = "image",
    key: str = MAX_IMAGE_PIXELS_KEY,
) -> None:
    """Raise :class:`DataError` naming ``path`` if it is missing, not an image, truncated, or has more
    than ``max_pixels`` pixels (the config ``key``; checked on the header, before decoding)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    with open_image(path, max_pixels, what, key) as image:
        try:
            if not _ending_looks_complete(path, image.format):
                image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"cannot read {what} {path}: {error}") from error


def check_samples(
    samples: Iterable[Sample],
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    key: str = MAX_IMAGE_PIXELS_KEY,
) -> int:
    """Check every image and mask of ``samples``; returns how many files were checked."""
    checked = 0
    for sample in samples:
        check_image_file(sample.path, max_pixels, key=key)
        checked += 1
        if sample.mask_path:
            # A mask folder (several masks of one image) is checked file by file.
            for mask in mask_files(sample.mask_path):
                check_image_file(mask, max_pixels, what="mask", key=key)
                checked += 1
    return checked


def preflight(datamodule, categories: list[str], references: dict[str, list[Sample]]) -> int:
    """Check every file a job reads: test images and masks, references, auxiliary training data.

    Each dataset's files are held to its own ``max_image_pixels`` (``data.`` / ``train_data.``).
    """
    checked = 0
    limit = datamodule.source.max_image_pixels
    for category in categories:
        checked += check_samples(datamodule.source.samples(category, "test"), limit)
        checked += check_samples(references.get(category, []), limit)
    if datamodule.train_source is not None:
        limit = datamodule.train_source.max_image_pixels
        checked += check_samples(datamodule.train_samples(), limit, key="train_data.max_image_pixels")
    return checked
