"""Dataset sources: where the images of each category and split are, and what they are.

A source only lists :class:`~anomaly_vlm.data.batch.Sample` records; reading pixels is the one
dataset class's job. New datasets implement :class:`DatasetSource` and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, DataError, check_max_pixels
from anomaly_vlm.data.links import warn_outside_links

log = logging.getLogger(__name__)

Split = Literal["train", "test"]
NORMAL_FOLDER = "good"


class DatasetSource:
    """Base class: a named collection of categories with train/test samples.

    Args:
        categories: subset of categories to use; None means all available.
        class_names: category -> the words used for it in prompts (``data.class_names``). The
            runner merges them into the prompt set's ``class_name_overrides`` (the data's names win),
            so a dataset's own vocabulary reaches every method without touching the prompt files.
        max_image_pixels: the most pixels (width x height) an image or mask file of this dataset may
            have (``data.max_image_pixels``); larger files are refused from their header, before
            decoding. None: no limit.

    Symlinks under the dataset folder (:meth:`link_roots`) are followed; those leading outside it are
    reported in one warning the first time the categories are listed.
    """

    name: str = "dataset"
    #: Whether test samples carry labels (and so can be scored by the metrics); False for ``data=images``.
    labelled: bool = True

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self._requested = list(categories) if categories else None
        self._class_names = {str(key): str(value) for key, value in (class_names or {}).items()}
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        self._links_reported = False

    @property
    def class_names(self) -> dict[str, str]:
        """Prompt names of the categories that have one (checked against the available categories)."""
        if self._class_names:
            available = self.available_categories()
            unknown = sorted(set(self._class_names) - set(available))
            if unknown:
                raise DataError(
                    f"data.class_names: {unknown} not in dataset '{self.name}'. Valid categories: {available}"
                )
        return dict(self._class_names)

    def available_categories(self) -> list[str]:
        """All categories present in this source."""
        raise NotImplementedError

    def link_roots(self) -> list[Path]:
        """The folders this source lists files in, whose outward symlinks are reported (its ``root``)."""
        root = getattr(self, "root", None)
        return [Path(root)] if root is not None else []

    def report_outside_links(self) -> None:
        """Warn once per folder of :meth:`link_roots` about symlinks that lead outside it."""
        if getattr(self, "_links_reported", False):
            return
        self._links_reported = True
        for root in self.link_roots():
            warn_outside_links(root)

    @property
    def categories(self) -> list[str]:
        """The selected categories, validated against the available ones."""
        available = self.available_categories()
        self.report_outside_links()
        if self._requested is None:
            return available
        unknown = [category for category in self._requested if category not in available]
        if unknown:
            raise DataError(
                f"data.categories: {unknown} not in dataset '{self.name}'. Valid categories: {available}"
            )
        return list(self._requested)

    def samples(self, category: str, split: Split) -> list[Sample]:
        """All samples of one category and split, in a stable order."""
        raise NotImplementedError

    def has_masks(self, category: str) -> bool:
        """Whether anomalous test images of this category come with ground-truth masks."""
        return True


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name (hidden files skipped)."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


class MVTecLayout(DatasetSource):
    """Any dataset in MVTec AD layout.

    ``<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``

    Args:
        root: dataset folder.
        categories: subset; None means every category folder under ``root``.
        require_masks: an anomalous test image without its mask is an error (MVTec AD, VisA). With
            False, a category without any mask reports image metrics only.
        mask_suffix: mask file name = image stem + this suffix + extension.
        class_names: category -> words used in prompts (see :class:`DatasetSource`).
        max_image_pixels: largest image or mask file, in pixels (see :class:`DatasetSource`).
    """

    name = "mvtec_layout"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        require_masks: bool = True,
        mask_suffix: str = "_mask",
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(categories, class_names=class_names, max_image_pixels=max_image_pixels)
        self.root = Path(root).expanduser()
        self.require_masks = require_masks
        self.mask_suffix = mask_suffix
        self._cache: dict[tuple[str, str], list[Sample]] = {}
        self._warned_masks: set[tuple[str, str]] = set()

    def _check_root(self) -> None:
        if self.root.is_file():
            raise DataError(f"dataset root {self.root} is a file; data.root must be the dataset folder")
        if not self.root.is_dir():
            raise DataError(f"dataset root does not exist: {self.root} (set data.root or DATA_ROOT)")
        if not any(entry for entry in self.root.iterdir() if not entry.name.startswith(".")):
            raise DataError(f"dataset root is empty: {self.root} (set data.root or DATA_ROOT)")

    def available_categories(self) -> list[str]:
        self._check_root()
        found = sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_dir() and not path.name.startswith(".") and (path / "test").is_dir()
        )
        if not found:
            raise DataError(f"dataset root {self.root} holds no category folders with a test/ subfolder")
        return found

    def _find_mask(self, category: str, defect: str, image: Path) -> Path | None:
        folder = self.root / category / "ground_truth" / defect
        for extension in (".png", image.suffix, ".bmp", ".tif", ".jpg"):
            candidate = folder / f"{image.stem}{self.mask_suffix}{extension}"
            if candidate.is_file():
                return candidate
        return None

    def expected_mask(self, category: str, defect: str, image: Path) -> Path:
        """Where the mask of an anomalous image should be (for error messages)."""
        return self.root / category / "ground_truth" / defect / f"{image.stem}{self.mask_suffix}.png"

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        self._check_root()
        split_dir = self.root / category / split
        if not split_dir.is_dir():
            raise DataError(f"category folder missing: {split_dir}")
        records: list[Sample] = []
        defect_dirs = sorted(
            path for path in split_dir.iterdir() if path.is_dir() and not path.name.startswith(".")
        )
        for defect_dir in defect_dirs:
            defect = defect_dir.name
            if split == "train" and defect != NORMAL_FOLDER:
                continue
            for image in list_images(defect_dir):
                if defect == NORMAL_FOLDER:
                    records.append(Sample(str(image), category, 0, NORMAL_FOLDER, None))
                    continue
                mask = self._find_mask(category, defect, image)
                if mask is None and not self.require_masks:
                    self._warn_unmatched_masks(category, defect, image)
                if mask is None and self.require_masks:
                    expected = self.expected_mask(category, defect, image)
                    raise DataError(f"anomalous test image {image} has no mask; expected {expected}")
                records.append(Sample(str(image), category, 1, defect, str(mask) if mask else None))
        if not records:
            raise DataError(f"no images found under {split_dir}")
        self._cache[key] = records
        return records

    def _warn_unmatched_masks(self, category: str, defect: str, image: Path) -> None:
        """Masks that exist but match no image under ``mask_suffix`` would silently turn pixel metrics off."""
        folder = self.root / category / "ground_truth" / defect
        if (category, defect) in self._warned_masks or not folder.is_dir():
            return
        self._warned_masks.add((category, defect))
        found = list_images(folder)
        if found:
            log.warning(
                "%s holds %d mask(s) but none named like %s (data.mask_suffix=%r), e.g. %s; pixel metrics "
                "of category '%s' are off unless data.mask_suffix matches the mask names",
                folder,
                len(found),
                f"{image.stem}{self.mask_suffix}.png",
                self.mask_suffix,
                found[0].name,
                category,
            )

    def has_masks(self, category: str) -> bool:
        anomalous = [sample for sample in self.samples(category, "test") if sample.label == 1]
        if not anomalous:
            return False
        with_mask = [sample for sample in anomalous if sample.mask_path]
        if with_mask and len(with_mask) != len(anomalous):
            missing = next(sample for sample in anomalous if not sample.mask_path)
            expected = self.expected_mask(category, missing.defect_type, Path(missing.path))
            raise DataError(
                f"anomalous test image {missing.path} has no mask; expected {expected} "
                f"(category '{category}' has masks for other images; pixel metrics need all or none)"
            )
        return bool(with_mask)
