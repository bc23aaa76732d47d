"""Checks that run before any weights load, so a bad file fails a job in seconds, not mid-run.

Every image (and mask) a job will read is opened once for its header, and PNG, JPEG and BMP files are
checked for truncation by their last bytes (the end marker, or BMP's declared size) -- a few bytes
read per file instead of a full decode. A file whose ending looks wrong is fully decoded before it is
reported, so trailing bytes some cameras append never cause a false alarm.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.image_io import DataError, mask_files

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


def check_image_file(path: str | Path) -> None:
    """Raise :class:`DataError` naming ``path`` if it is missing, not an image, or truncated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image_format = image.format
            if not _ending_looks_complete(path, image_format):
                image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error


def check_samples(samples: Iterable[Sample]) -> int:
    """Check every image and mask of ``samples``; returns how many files were checked."""
    checked = 0
    for sample in samples:
        check_image_file(sample.path)
        checked += 1
        if sample.mask_path:
            # A mask folder (several masks of one image) is checked file by file.
            for mask in mask_files(sample.mask_path):
                check_image_file(mask)
                checked += 1
    return checked


def preflight(datamodule, categories: list[str], references: dict[str, list[Sample]]) -> int:
    """Check every file a job reads: test images and masks, references, auxiliary training data."""
    checked = 0
    for category in categories:
        checked += check_samples(datamodule.source.samples(category, "test"))
        checked += check_samples(references.get(category, []))
    if datamodule.train_source is not None:
        checked += check_samples(datamodule.train_samples())
    return checked
