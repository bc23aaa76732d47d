"""KolektorSDD2 (Bozic et al., Comput. Ind. 2021): 3,336 surface images, 2,332 train and 1,004 test.

As downloaded: ``<root>/{train,test}/<id>.png`` with one mask ``<id>_GT.png`` per image (the authors'
reader, ``mixed-segdec-net-comind2021/data/input_ksdd2.py``). An image is defective when its mask marks
any pixel; normal images come with an all-black mask. Zero-shot protocol: the ``test`` folder (1,004
images); the normal images of ``train`` serve as few-shot references. The release names no product, so the
one category ``ksdd2`` is also its prompt name unless ``data.class_names`` gives one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets._layout import NORMAL, BenchmarkLayout, check_root, image_files, mask_is_empty
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError
from anomaly_vlm.data.source import Split

KSDD2_CATEGORY = "ksdd2"
MASK_SUFFIX = "_GT"


class KolektorSDD2(BenchmarkLayout):
    """KolektorSDD2 as downloaded.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        categories: ``[ksdd2]`` or None.
        class_names: category -> words used in prompts.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "ksdd2"
    dataset_title = "KolektorSDD2"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(
            root,
            categories,
            class_names,
            known_categories=(KSDD2_CATEGORY,),
            max_image_pixels=max_image_pixels,
        )

    def available_categories(self) -> list[str]:
        check_root(self.root, self.dataset_title)
        if not (self.root / "test").is_dir():
            raise DataError(
                f"KolektorSDD2: {self.root / 'test'} not found (the release has train/ and test/)"
            )
        return [KSDD2_CATEGORY]

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        folder = self.root / split
        records = []
        for image in image_files(folder):
            if image.stem.endswith(MASK_SUFFIX):
                continue
            mask = folder / f"{image.stem}{MASK_SUFFIX}.png"
            if not mask.is_file():
                raise DataError(f"KolektorSDD2 image {image} has no mask; expected {mask}")
            if mask_is_empty(mask, self.max_image_pixels):
                records.append(Sample(str(image), category, 0, NORMAL, None))
            elif split == "test":
                records.append(Sample(str(image), category, 1, "defect", str(mask)))
        if not records:
            raise DataError(f"KolektorSDD2: no images under {folder}")
        self._cache[key] = records
        return records
