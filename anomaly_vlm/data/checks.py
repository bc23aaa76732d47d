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


#: How many unusable files one error names; the others are counted ("and N more").
LISTED_FILES = 10


def _check_samples_into(
    samples: Iterable[Sample], max_pixels: int | None, key: str, problems: dict[str, DataError]
) -> int:
    """Check every image and mask of ``samples``, collecting each file's problem instead of stopping at
    the first; returns how many files were checked."""
    checked = 0
    for sample in samples:
        files = [(sample.path, "image")]
        if sample.mask_path:
            # A mask folder (several masks of one image) is checked file by file.
            files += [(mask, "mask") for mask in mask_files(sample.mask_path)]
        for path, what in files:
            checked += 1
            try:
                check_image_file(path, max_pixels, what=what, key=key)
            except DataError as error:
                problems.setdefault(str(path), error)
    return checked


def raise_file_problems(problems: dict[str, DataError]) -> None:
    """Raise one :class:`DataError` for the collected problems: a single file's own message, or the
    count with the first :data:`LISTED_FILES` messages, so a folder of bad files is fixed in one pass."""
    if not problems:
        return
    errors = list(problems.values())
    if len(errors) == 1:
        raise errors[0]
    # PIL's reason repeats the path the message already names.
    listed = "; ".join(
        str(error).replace(f" '{path}'", "") for path, error in list(problems.items())[:LISTED_FILES]
    )
    more = f"; and {len(errors) - LISTED_FILES} more" if len(errors) > LISTED_FILES else ""
    raise DataError(f"{len(errors)} files cannot be used: {listed}{more}") from errors[0]


def check_samples(
    samples: Iterable[Sample],
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    key: str = MAX_IMAGE_PIXELS_KEY,
) -> int:
    """Check every image and mask of ``samples``; returns how many files were checked.

    Raises:
        DataError: naming every file that is missing, unreadable, truncated or too large (the first
            :data:`LISTED_FILES` of them, and how many more).
    """
    problems: dict[str, DataError] = {}
    checked = _check_samples_into(samples, max_pixels, key, problems)
    raise_file_problems(problems)
    return checked


def preflight(datamodule, categories: list[str], references: dict[str, list[Sample]]) -> int:
    """Check every file a job reads: test images and masks, references, auxiliary training data.

    Each dataset's files are held to its own ``max_image_pixels`` (``data.`` / ``train_data.``). All
    files are checked before one error names every bad one (see :func:`raise_file_problems`).
    """
    checked = 0
    problems: dict[str, DataError] = {}
    limit = datamodule.source.max_image_pixels
    for category in categories:
        checked += _check_samples_into(
            datamodule.source.samples(category, "test"), limit, MAX_IMAGE_PIXELS_KEY, problems
        )
        checked += _check_samples_into(references.get(category, []), limit, MAX_IMAGE_PIXELS_KEY, problems)
    if datamodule.train_source is not None:
        limit = datamodule.train_source.max_image_pixels
        checked += _check_samples_into(
            datamodule.train_samples(), limit, "train_data.max_image_pixels", problems
        )
    raise_file_problems(problems)
    return checked
