"""The one base of every dataset in MVTec AD's layout; a new such dataset is a few class attributes.

::

    <root>/<category>/train/good/*.png                          normal training images (few-shot references)
    <root>/<category>/test/good/*.png                           normal test images
    <root>/<category>/test/<defect>/*.png                       anomalous test images, a folder per defect
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png     their masks

Releases differ in the names of these folders (BTAD's normal folder is ``ok``; MVTec AD 2 tests on
``test_public`` and keeps its masks inside it), in how a mask is named after its image, and in whether
every anomalous image must have one. Each of these is a class attribute of :class:`MVTecLayout`, so a new
dataset in this layout is a subclass that sets them, without an ``__init__``::

    class MyParts(MVTecLayout):
        # My parts as the line camera saves them: ``ok`` folders, masks named like their image.
        name = "my_parts"                   # in results.json and the tables
        title = "My parts"                  # in error messages
        known_categories = ("bolt", "nut")  # in this order; None: every folder holding test/
        normal_folder = "ok"
        mask_suffixes = ("",)

A ``conf/data/my_parts.yaml`` with ``_target_`` naming the class builds it; users set the instance options
there: ``root``, ``categories``, ``class_names``, ``max_image_pixels``, and, where the masks are theirs to
name, ``mask_suffix`` and ``require_masks``.

Masks are matched to images by name: ``<stem><suffix>.<ext>`` for each of :attr:`MVTecLayout.mask_suffixes`
in turn. The official conversion scripts of AnomalyCLIP (``generate_dataset_json/*.py``) do not match by
name: they sort both folders and pair them by position. With :attr:`MVTecLayout.pair_masks_by_position`
that pairing is the fallback when the name finds nothing and a defect folder holds exactly as many masks
as images, so every benchmark release the VLM papers used reads as it was read there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import NORMAL, DatasetSource, Split
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError, list_images

log = logging.getLogger(__name__)

#: The mask names of the benchmark releases: image stem + one of these (tried in order) + an extension.
RELEASE_MASK_SUFFIXES = ("_mask", "", "_label", "_GT", "_gt")
#: Mask file extensions, tried in this order after ``.png`` and the image's own extension.
MASK_EXTENSIONS = (".bmp", ".PNG", ".BMP", ".tif", ".jpg")


class MVTecLayout(DatasetSource):
    """Any dataset in MVTec AD's layout, configured by the class attributes below.

    Args:
        root: the dataset folder, holding one folder per category (or, with :attr:`root_may_be_category`,
            one category folder).
        categories: subset; None means every available category (see :meth:`available_categories`).
        class_names: category -> words used in prompts; overrides :attr:`default_class_names`.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
        mask_suffix: mask file name = image stem + this suffix (``_mask`` as in MVTec AD, ``""`` for
            masks named exactly like their image); replaces :attr:`mask_suffixes`. None: keep them.
        require_masks: overrides :attr:`require_masks`; None keeps it.
    """

    name = "mvtec_layout"
    #: The release's name in error messages (``MPDD: anomalous test image ...``); None: no prefix.
    title: str | None = None
    #: The release's categories, in the release's order; None: every folder holding a category subfolder.
    known_categories: tuple[str, ...] | None = None
    #: Every known category folder must be present unless ``data.categories`` selects a subset (MVTec
    #: AD: a partial copy is an error, not a smaller benchmark). False: the categories present are read.
    require_all_categories: bool = False
    #: A folder is a category when it holds one of these; None: the test folder.
    category_subfolders: tuple[str, ...] | None = None
    #: ``root`` may be a single category folder (one holding a category subfolder itself).
    root_may_be_category: bool = False
    #: Name of the normal-image folders (``good``; BTAD ``ok``). Normal samples get the defect type ``good``.
    normal_folder: str = "good"
    train_folder: str = "train"
    #: The evaluated split's folder (MVTec AD 2: ``test_public``).
    test_folder: str = "test"
    #: Where the masks live, relative to the category folder (MVTec AD 2: ``test_public/ground_truth``).
    ground_truth: str = "ground_truth"
    #: Mask name = image stem + one of these (tried in order) + an image extension.
    mask_suffixes: tuple[str, ...] = ("_mask",)
    #: Fall back to the official conversions' pairing of sorted masks with sorted images.
    pair_masks_by_position: bool = False
    #: An anomalous image has a folder of masks, ``<ground_truth>/<defect>/<stem>/*.png``, fused into one
    #: (MVTec LOCO AD, one mask per defect region).
    mask_folder_per_image: bool = False
    #: An anomalous test image without its mask is an error. False: a category without any mask reports
    #: image metrics only (masks for some anomalous images but not others stay an error).
    require_masks: bool = True
    #: The defect folders read (None: all of them); MVTec LOCO AD selects its anomaly types with it.
    defect_folders: tuple[str, ...] | None = None

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        *,
        mask_suffix: str | None = None,
        require_masks: bool | None = None,
    ) -> None:
        path = Path(root).expanduser()
        if self.root_may_be_category and any((path / folder).is_dir() for folder in self._subfolders()):
            # A single category folder: its name is the category.
            if categories and list(categories) != [path.name]:
                raise DataError(
                    f"data.root={path} is a single category folder ('{path.name}'); "
                    f"data.categories={list(categories)} does not match it"
                )
            categories = [path.name]
            path = path.parent
        super().__init__(categories, class_names=class_names, max_image_pixels=max_image_pixels)
        self.root = path
        if mask_suffix is not None:
            self.mask_suffixes = (str(mask_suffix),)
        if require_masks is not None:
            self.require_masks = bool(require_masks)
        self._cache: dict[tuple[str, str], list[Sample]] = {}
        self._warned_masks: set[tuple[str, str]] = set()

    # ----- categories -------------------------------------------------------------------------------
    def _subfolders(self) -> tuple[str, ...]:
        return self.category_subfolders or (self.test_folder,)

    def _message(self, text: str) -> str:
        return f"{self.title}: {text}" if self.title else text

    def _check_root(self) -> None:
        if self.root.is_file():
            raise DataError(f"dataset root {self.root} is a file; data.root must be the dataset folder")
        if not self.root.is_dir():
            raise DataError(f"dataset root does not exist: {self.root} (set data.root or DATA_ROOT)")
        if not any(entry for entry in self.root.iterdir() if not entry.name.startswith(".")):
            raise DataError(f"dataset root is empty: {self.root} (set data.root or DATA_ROOT)")

    def available_categories(self) -> list[str]:
        """The known categories present (all of them with :attr:`require_all_categories`), or every
        folder holding a category subfolder."""
        self._check_root()
        if self.require_all_categories and self.known_categories is not None:
            return list(self.known_categories)
        subfolders = self._subfolders()
        present = sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_dir()
            and not path.name.startswith(".")
            and any((path / folder).is_dir() for folder in subfolders)
        )
        if self.known_categories is not None:
            present = [category for category in self.known_categories if category in present]
        if not present:
            wanted = " or ".join(f"{folder}/" for folder in subfolders)
            known = f" (categories {list(self.known_categories)})" if self.known_categories else ""
            raise DataError(
                self._message(
                    f"dataset root {self.root} holds no category folders with a {wanted} subfolder{known}"
                )
            )
        return present

    @property
    def categories(self) -> list[str]:
        selected = super().categories
        if self.require_all_categories:
            missing = [
                str(self.root / category) for category in selected if not (self.root / category).is_dir()
            ]
            if missing:
                raise DataError(
                    f"{self.title or self.name} category folder missing: {missing} "
                    "(select a subset with data.categories)"
                )
        return selected

    # ----- samples ------------------------------------------------------------------------------------
    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        self._check_root()
        split_dir = self.root / category / (self.test_folder if split == "test" else self.train_folder)
        if not split_dir.is_dir():
            raise DataError(self._message(f"category folder missing: {split_dir}"))
        # MVTec AD 2 keeps its masks inside the test folder (test_public/ground_truth): not a defect type.
        mask_root = self.root / category / self.ground_truth
        records: list[Sample] = []
        for defect_dir in sorted(
            path for path in split_dir.iterdir() if path.is_dir() and not path.name.startswith(".")
        ):
            defect = defect_dir.name
            if defect == self.normal_folder:
                records += [
                    Sample(str(image), category, 0, NORMAL, None) for image in list_images(defect_dir)
                ]
            elif split == "test" and defect_dir != mask_root and self._reads(defect):
                records += self._anomalous(category, defect, list_images(defect_dir))
        if not records:
            raise DataError(self._message(f"no images found under {split_dir}"))
        self._cache[key] = records
        return records

    def _reads(self, defect: str) -> bool:
        return self.defect_folders is None or defect in self.defect_folders

    def _anomalous(self, category: str, defect: str, images: list[Path]) -> list[Sample]:
        folder = self._mask_folder(category, defect)
        by_position = None
        records = []
        for index, image in enumerate(images):
            mask = self._find_mask(folder, image)
            if mask is None and self.pair_masks_by_position:
                by_position = by_position or self._masks_by_position(folder, images)
                mask = by_position[index] if by_position else None
            if mask is None and self.require_masks:
                expected = self.expected_mask(category, defect, image)
                raise DataError(
                    self._message(f"anomalous test image {image} has no mask; expected {expected}")
                )
            if mask is None:
                self._warn_unmatched_masks(category, defect, image)
            records.append(Sample(str(image), category, 1, defect, str(mask) if mask else None))
        return records

    def _mask_folder(self, category: str, defect: str) -> Path:
        return self.root / category / self.ground_truth / defect

    def _find_mask(self, folder: Path, image: Path) -> Path | None:
        """The mask of ``image`` in ``folder`` by name, or None."""
        if self.mask_folder_per_image:
            masks = folder / image.stem
            return masks if list_images(masks) else None
        for suffix in self.mask_suffixes:
            for extension in dict.fromkeys((".png", image.suffix, *MASK_EXTENSIONS)):
                candidate = folder / f"{image.stem}{suffix}{extension}"
                if candidate.is_file():
                    return candidate
        return None

    def _masks_by_position(self, folder: Path, images: list[Path]) -> list[Path] | None:
        """The official conversions' rule: sorted masks paired with sorted images, when counts agree."""
        masks = list_images(folder)
        return masks if masks and len(masks) == len(images) else None

    def expected_mask(self, category: str, defect: str, image: Path) -> str:
        """Where the mask of an anomalous image should be (for error messages)."""
        folder = self._mask_folder(category, defect)
        if self.mask_folder_per_image:
            return f"{folder / image.stem}/000.png (a folder of masks, one per defect region)"
        if len(self.mask_suffixes) == 1:
            expected = str(folder / f"{image.stem}{self.mask_suffixes[0]}.png")
        else:
            expected = f"{folder / image.stem}{{{','.join(self.mask_suffixes)}}}.<png|bmp|...>"
        if self.pair_masks_by_position:
            expected += " (or as many masks as images in that folder, paired in sorted order)"
        return expected

    def _warn_unmatched_masks(self, category: str, defect: str, image: Path) -> None:
        """Masks that exist but match no image name would silently turn pixel metrics off."""
        folder = self._mask_folder(category, defect)
        if (category, defect) in self._warned_masks:
            return
        self._warned_masks.add((category, defect))
        found = list_images(folder)
        if found:
            suffix = self.mask_suffixes[0] if len(self.mask_suffixes) == 1 else list(self.mask_suffixes)
            log.warning(
                "%s holds %d mask(s) but none named like %s (data.mask_suffix=%r), e.g. %s; pixel metrics "
                "of category '%s' are off unless data.mask_suffix matches the mask names",
                folder,
                len(found),
                f"{image.stem}{self.mask_suffixes[0]}.png",
                suffix,
                found[0].name,
                category,
            )

    def has_masks(self, category: str) -> bool:
        anomalous = [sample for sample in self.samples(category, "test") if sample.label == 1]
        with_mask = [sample for sample in anomalous if sample.mask_path]
        if with_mask and len(with_mask) != len(anomalous):
            missing = next(sample for sample in anomalous if not sample.mask_path)
            expected = self.expected_mask(category, missing.defect_type, Path(missing.path))
            raise DataError(
                f"anomalous test image {missing.path} has no mask; expected {expected} "
                f"(category '{category}' has masks for other images; pixel metrics need all or none)"
            )
        return bool(with_mask)
