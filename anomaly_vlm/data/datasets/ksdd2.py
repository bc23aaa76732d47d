"""KolektorSDD2 (Bozic et al., Comput. Ind. 2021): 3,336 surface images, 2,332 train and 1,004 test.

As downloaded: ``<root>/{train,test}/<id>.png`` with one mask ``<id>_GT.png`` per image (the authors'
reader, ``mixed-segdec-net-comind2021/data/input_ksdd2.py``). An image is defective when its mask marks
any pixel; normal images come with an all-black mask. Zero-shot protocol: the ``test`` folder (1,004
images); the normal images of ``train`` serve as few-shot references. The release names no product, so the
one category ``ksdd2`` is also its prompt name unless ``data.class_names`` gives one.
"""

from __future__ import annotations

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import NORMAL, Split
from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.image_io import DataError, list_images, mask_is_empty

KSDD2_CATEGORY = "ksdd2"
MASK_SUFFIX = "_GT"


class KolektorSDD2(MVTecLayout):
    """KolektorSDD2 as downloaded: not MVTec's layout, so it lists its own samples.

    Options (``root``: the folder holding ``train/`` and ``test/``; ``categories``: ``[ksdd2]`` or None;
    ``class_names``, ``max_image_pixels``) as for every MVTec-style dataset
    (:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`).
    """

    name = "ksdd2"
    title = "KolektorSDD2"
    known_categories = (KSDD2_CATEGORY,)

    def available_categories(self) -> list[str]:
        self._check_root()
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
        for image in list_images(folder):
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
