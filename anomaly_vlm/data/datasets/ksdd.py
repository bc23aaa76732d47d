"""KolektorSDD (Tabernik et al., J. Intell. Manuf. 2020): 399 images of electrical commutators, 52 defective.

Two layouts circulate and are told apart automatically (``data.layout=auto``; force ``release`` or
``prepared``):

* ``release`` -- the archive as downloaded: ``<root>/kos01 .. kos50/Part<k>.jpg`` with one mask
  ``Part<k>_label.bmp`` per image (anomalib's and the authors' readers). An image is defective when its
  mask marks any pixel; normal images come with an all-black mask.
* ``prepared`` -- the MVTec-like copy AnomalyCLIP distributes and its ``generate_dataset_json/SDD.py``
  reads: ``<root>/electrical_commutators/{train/good, test/good, test/<defect>, ground_truth/<defect>}``.

Split: the VLM papers test every image zero-shot, so the ``release`` layout puts all 399 images in the
test split and has no training split (few-shot needs the ``prepared`` layout's ``train/good``). The one
category is ``electrical_commutators``; its prompt name defaults to "electrical commutators", the class
name AnomalyCLIP's conversion writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import NORMAL, Split
from anomaly_vlm.data.datasets.layout import RELEASE_MASK_SUFFIXES, MVTecLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError, list_images, mask_is_empty

KSDD_CATEGORY = "electrical_commutators"
KSDD_CLASS_NAME = "electrical commutators"
Layout = Literal["auto", "release", "prepared"]


class KolektorSDD(MVTecLayout):
    """KolektorSDD, release or prepared layout.

    Args:
        root: the release folder (``kos01`` ...) or the prepared folder (``electrical_commutators/``).
        categories: ``[electrical_commutators]`` or None.
        class_names: category -> words used in prompts.
        layout: ``auto``, ``release`` or ``prepared``.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "ksdd"
    title = "KolektorSDD"
    known_categories = (KSDD_CATEGORY,)
    default_class_names = {KSDD_CATEGORY: KSDD_CLASS_NAME}
    # The prepared layout, as AnomalyCLIP's conversion reads it.
    mask_suffixes = RELEASE_MASK_SUFFIXES
    pair_masks_by_position = True

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        layout: Layout = "auto",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(root, categories, class_names, max_image_pixels)
        if layout not in ("auto", "release", "prepared"):
            raise DataError(f"data.layout={layout!r} is not one of 'auto', 'release', 'prepared'")
        self.requested_layout = layout
        self._layout: str | None = None

    @property
    def layout(self) -> str:
        """``release`` or ``prepared`` (detected once)."""
        if self._layout is None:
            self._check_root()
            if self.requested_layout != "auto":
                self._layout = self.requested_layout
            elif (self.root / KSDD_CATEGORY / "test").is_dir():
                self._layout = "prepared"
            elif any(path.is_dir() and path.name.startswith("kos") for path in self.root.iterdir()):
                self._layout = "release"
            else:
                raise DataError(
                    f"{self.root} is neither the KolektorSDD release (kos01/Part0.jpg, Part0_label.bmp) nor "
                    f"the prepared layout ({KSDD_CATEGORY}/test/...)"
                )
        return self._layout

    def available_categories(self) -> list[str]:
        if self.layout == "prepared":
            return super().available_categories()
        return [KSDD_CATEGORY]

    def samples(self, category: str, split: Split) -> list[Sample]:
        if self.layout == "prepared":
            return super().samples(category, split)
        if split == "train":
            raise DataError(
                "KolektorSDD (release layout) has no training split: every image is a test image in the "
                "zero-shot protocol (few-shot needs the prepared layout's train/good)"
            )
        key = (category, split)
        if key not in self._cache:
            records = []
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("kos")):
                for image in list_images(folder):
                    if image.stem.endswith("_label"):
                        continue
                    mask = folder / f"{image.stem}_label.bmp"
                    if not mask.is_file():
                        raise DataError(f"KolektorSDD image {image} has no mask; expected {mask}")
                    if mask_is_empty(mask, self.max_image_pixels):
                        records.append(Sample(str(image), category, 0, NORMAL, None))
                    else:
                        records.append(Sample(str(image), category, 1, "defect", str(mask)))
            if not records:
                raise DataError(f"KolektorSDD: no images under {self.root}/kos*/")
            self._cache[key] = records
        return self._cache[key]
