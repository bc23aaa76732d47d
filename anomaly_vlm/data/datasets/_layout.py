"""Shared pieces of the benchmark readers: a tolerant MVTec-like layout and small helpers.

Several benchmarks ship in a layout close to MVTec AD's (``<category>/{train/<normal>, test/<normal>,
test/<defect>, ground_truth/<defect>/...}``) but differ in the normal folder's name (BTAD: ``ok``), in
image and mask formats (BMP, JPEG, PNG) and in how a mask is named after its image. The official
conversion scripts of AnomalyCLIP (``generate_dataset_json/*.py``) do not match masks to images by name:
they sort both folders and pair them by position. :class:`BenchmarkLayout` matches by name first
(``<stem><suffix>.<ext>`` for the suffixes listed) and falls back to that positional pairing only when
a defect folder holds exactly as many masks as images, so every release the VLM papers used reads as it
was read there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, DataError, open_image
from anomaly_vlm.data.source import DatasetSource, Split, list_images

NORMAL = "good"
#: Mask name = image stem + one of these (tried in order) + an image extension.
MASK_SUFFIXES = ("_mask", "", "_label", "_GT", "_gt")


def check_root(root: Path, name: str) -> None:
    """A clear error when a dataset root is missing or empty."""
    if not root.is_dir():
        raise DataError(f"{name} root does not exist: {root} (set data.root or DATA_ROOT)")
    if not any(entry for entry in root.iterdir() if not entry.name.startswith(".")):
        raise DataError(f"{name} root is empty: {root} (set data.root or DATA_ROOT)")


def mask_is_empty(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Whether a mask file marks no pixel (KolektorSDD/KSDD2 ship an all-black mask for normal images).

    A mask over ``max_pixels`` (``data.max_image_pixels``) is refused before decoding (:class:`DataError`).
    """
    with open_image(path, max_pixels, what="mask") as mask:
        try:
            return not np.asarray(mask.convert("L")).any()
        except OSError as error:
            raise DataError(f"cannot read mask {path}: {error}") from error


def find_mask(folder: Path, image: Path, suffixes: Sequence[str] = MASK_SUFFIXES) -> Path | None:
    """The mask of ``image`` in ``folder`` by name (``<stem><suffix>.<ext>``), or None."""
    extensions = dict.fromkeys((".png", image.suffix, ".bmp", ".PNG", ".BMP", ".tif", ".jpg"))
    for suffix in suffixes:
        for extension in extensions:
            candidate = folder / f"{image.stem}{suffix}{extension}"
            if candidate.is_file():
                return candidate
    return None


class BenchmarkLayout(DatasetSource):
    """An MVTec-like benchmark read tolerantly (normal folder name, mask names, formats).

    Args:
        root: dataset folder holding one folder per category.
        categories: subset; None means every known category present under ``root``.
        class_names: category -> words used in prompts; overrides :attr:`default_class_names`.
        known_categories: the release's categories, in the release order (None: any folder with ``test/``).
        normal_folder: name of the normal-image folders (``good``; BTAD ``ok``).
        test_folder: name of the test split folder (MVTec AD 2: ``test_public``).
        ground_truth: where masks live, relative to the category folder.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "benchmark"
    dataset_title = "dataset"
    #: Prompt words per category where the release (or the official conversion) names them differently.
    default_class_names: dict[str, str] = {}

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        known_categories: Sequence[str] | None = None,
        normal_folder: str = NORMAL,
        test_folder: str = "test",
        ground_truth: str = "ground_truth",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(categories, class_names=class_names, max_image_pixels=max_image_pixels)
        self.root = Path(root).expanduser()
        self.known_categories = tuple(known_categories) if known_categories else None
        self.normal_folder = normal_folder
        self.test_folder = test_folder
        self.ground_truth = ground_truth
        self._cache: dict[tuple[str, str], list[Sample]] = {}

    @property
    def class_names(self) -> dict[str, str]:
        given = super().class_names  # checks the user's keys against the categories
        defaults = {key: value for key, value in self.default_class_names.items() if key not in given}
        return {**defaults, **given}

    def available_categories(self) -> list[str]:
        check_root(self.root, self.dataset_title)
        present = [
            path.name
            for path in sorted(self.root.iterdir())
            if path.is_dir() and not path.name.startswith(".") and (path / self.test_folder).is_dir()
        ]
        if self.known_categories is not None:
            present = [category for category in self.known_categories if category in present]
        if not present:
            expected = f"<category>/{self.test_folder}/"
            known = f" (categories {list(self.known_categories)})" if self.known_categories else ""
            raise DataError(
                f"{self.dataset_title}: no category folder with {expected} under {self.root}{known}"
            )
        return present

    def _split_folder(self, split: Split) -> str:
        return self.test_folder if split == "test" else "train"

    def _mask_folder(self, category: str, defect: str) -> Path:
        return self.root / category / self.ground_truth / defect

    def _masks_by_position(self, folder: Path, images: list[Path]) -> list[Path] | None:
        """The official conversions' rule: sorted masks paired with sorted images, when counts agree."""
        if not folder.is_dir():
            return None
        masks = list_images(folder)
        return masks if len(masks) == len(images) and masks else None

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        split_dir = self.root / category / self._split_folder(split)
        if not split_dir.is_dir():
            raise DataError(f"{self.dataset_title}: folder missing: {split_dir}")
        records: list[Sample] = []
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            defect = defect_dir.name
            images = list_images(defect_dir)
            if defect == self.normal_folder:
                records += [Sample(str(image), category, 0, NORMAL, None) for image in images]
                continue
            # MVTec AD 2 keeps its masks inside the test folder (test_public/ground_truth).
            if split == "train" or defect == Path(self.ground_truth).name:
                continue
            folder = self._mask_folder(category, defect)
            by_position = None
            for index, image in enumerate(images):
                mask = find_mask(folder, image)
                if mask is None:
                    by_position = by_position or self._masks_by_position(folder, images)
                    mask = by_position[index] if by_position else None
                if mask is None:
                    raise DataError(
                        f"{self.dataset_title}: anomalous test image {image} has no mask in {folder} "
                        f"(looked for {image.stem}{{{','.join(MASK_SUFFIXES)}}}.<png|bmp|...>)"
                    )
                records.append(Sample(str(image), category, 1, defect, str(mask)))
        if not records:
            raise DataError(f"{self.dataset_title}: no images under {split_dir}")
        self._cache[key] = records
        return records

    def has_masks(self, category: str) -> bool:
        return any(sample.mask_path for sample in self.samples(category, "test"))


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder (any case of extension), sorted; hidden files skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )
