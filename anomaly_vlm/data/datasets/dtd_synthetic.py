"""DTD-Synthetic (Aota et al., WACV 2023, "Zero-shot versus many-shot"): 12 textures from the Describable
Textures Dataset with synthetic defects.

Distributed in an MVTec-like layout (``<texture>/{train/good, test/good, test/<defect>,
ground_truth/<defect>/...}``), the layout AnomalyCLIP's ``generate_dataset_json/DTD.py`` reads; the 12
categories are that script's list. That script pairs masks with images by sorted position rather than by
name, so the mask naming was not checked here: masks are matched by stem (``<stem>_mask``, ``<stem>``, ...)
and, failing that, by position as the script does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.datasets._layout import BenchmarkLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS

DTD_CATEGORIES = (
    "Woven_001",
    "Woven_127",
    "Woven_104",
    "Stratified_154",
    "Blotchy_099",
    "Woven_068",
    "Woven_125",
    "Marbled_078",
    "Perforated_037",
    "Mesh_114",
    "Fibrous_183",
    "Matted_069",
)


class DTDSynthetic(BenchmarkLayout):
    """DTD-Synthetic. Class names in prompts default to the folder names, as in the official code.

    Args:
        root: the folder holding the 12 texture folders.
        categories: subset; None means all present.
        class_names: category -> words used in prompts.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "dtd_synthetic"
    dataset_title = "DTD-Synthetic"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(
            root, categories, class_names, known_categories=DTD_CATEGORIES, max_image_pixels=max_image_pixels
        )
