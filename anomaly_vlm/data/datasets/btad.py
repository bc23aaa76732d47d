"""BTAD, beanTech Anomaly Detection (Mishra et al., ICIP 2021, "VT-ADL"): 3 products.

As downloaded (``BTech_Dataset_transformed``)::

    <root>/{01,02,03}/train/ok/*.{bmp,png}
    <root>/{01,02,03}/test/{ok,ko}/*.{bmp,png}
    <root>/{01,02,03}/ground_truth/ko/<stem>.{png,bmp}

Normal images live in ``ok`` folders, anomalous ones in ``ko`` (AnomalyCLIP's ``generate_dataset_json/
btad.py`` treats every folder but ``ok`` as anomalous). Images are BMP or PNG depending on the product
(anomalib's reader accepts both); masks are matched by stem whatever their extension (anomalib's reader
expects ``.png`` masks; BMP masks are accepted too, in case a copy kept them in that format). The
products have no names: the prompts use the folder names ``01``/``02``/``03``, as the official code does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.datasets._layout import BenchmarkLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS

BTAD_CATEGORIES = ("01", "02", "03")


class BTAD(BenchmarkLayout):
    """BTAD as downloaded (``ok``/``ko`` folders, BMP or PNG).

    Args:
        root: the ``BTech_Dataset_transformed`` folder.
        categories: subset of ``01``, ``02``, ``03``; None means all present.
        class_names: category -> words used in prompts.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "btad"
    dataset_title = "BTAD"

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
            known_categories=BTAD_CATEGORIES,
            normal_folder="ok",
            max_image_pixels=max_image_pixels,
        )
