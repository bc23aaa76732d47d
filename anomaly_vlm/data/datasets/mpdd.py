"""MPDD, Metal Parts Defect Detection (Jezek et al., ICUMT 2021): 6 categories of metal parts.

Released in MVTec AD's layout (``<category>/{train/good, test/good, test/<defect>,
ground_truth/<defect>/<stem>_mask.png}``); the category list is the one of AnomalyCLIP's conversion script
(``generate_dataset_json/mpdd.py``), which the VLM papers used. Zero-shot protocol: every test image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.datasets._layout import BenchmarkLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


class MPDD(BenchmarkLayout):
    """MPDD as downloaded. Class names in prompts default to the folder names, as in the official code.

    Args:
        root: the release folder holding the six category folders.
        categories: subset; None means all present.
        class_names: category -> words used in prompts.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "mpdd"
    dataset_title = "MPDD"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(
            root, categories, class_names, known_categories=MPDD_CATEGORIES, max_image_pixels=max_image_pixels
        )
