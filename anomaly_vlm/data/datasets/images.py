"""Unlabelled images to score (``mode=predict``, ``data=images``)."""

from __future__ import annotations

from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import DatasetSource, Split
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, DataError, list_images


def _collect(path: Path, key: str, recursive: bool) -> list[Path]:
    if not path.exists():
        raise DataError(f"{key}: {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{key}: {path} is not an image file (extensions {list(IMAGE_EXTENSIONS)})")
        return [path]
    found = list_images(path, recursive=recursive)
    if not found:
        raise DataError(f"{key}: no images in {path} (extensions {list(IMAGE_EXTENSIONS)})")
    return found


class ImageFiles(DatasetSource):
    """One image, or a folder of images, without labels; optional normal references for few-shot.

    The images form a single category: its name is what the prompts call the object, so set
    ``data.category`` to a word the text encoder knows (``bottle``, ``pcb``); default the folder name.

    Args:
        path: an image file or a folder (searched recursively when ``recursive``).
        reference_dir: normal images of the same object, the few-shot references (``shots > 0``).
        category: category / class name of the images; default the folder's name.
        recursive: also take images in subfolders of ``path``.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "images"
    labelled = False

    def __init__(
        self,
        path: str | Path,
        reference_dir: str | Path | None = None,
        category: str | None = None,
        recursive: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.path = Path(path).expanduser()
        folder = self.path if self.path.is_dir() else self.path.parent
        self.category = category or folder.resolve().name or "object"
        super().__init__([self.category], max_image_pixels=max_image_pixels)
        self.reference_dir = Path(reference_dir).expanduser() if reference_dir else None
        self.recursive = recursive
        self._cache: dict[str, list[Sample]] = {}

    def available_categories(self) -> list[str]:
        return [self.category]

    def link_roots(self) -> list[Path]:
        folders = (self.path, self.reference_dir)
        return [folder for folder in folders if folder is not None and folder.is_dir()]

    def samples(self, category: str, split: Split) -> list[Sample]:
        if split not in self._cache:
            if split == "test":
                files = _collect(self.path, "data.path", self.recursive)
                self._cache[split] = [Sample(str(file), self.category, -1, "unknown") for file in files]
            else:
                if self.reference_dir is None:
                    raise DataError(
                        "few-shot prediction needs normal reference images: set data.reference_dir "
                        "(or shots=0)"
                    )
                files = _collect(self.reference_dir, "data.reference_dir", self.recursive)
                self._cache[split] = [Sample(str(file), self.category, 0, "good") for file in files]
        return self._cache[split]

    def has_masks(self, category: str) -> bool:
        return False
