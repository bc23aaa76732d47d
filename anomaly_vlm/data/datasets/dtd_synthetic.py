"""DTD-Synthetic (Aota et al., WACV 2023, "Zero-shot versus many-shot"): 12 textures from the Describable
Textures Dataset with synthetic defects.

Distributed in an MVTec-like layout (``<texture>/{train/good, test/good, test/<defect>,
ground_truth/<defect>/...}``), the layout AnomalyCLIP's ``generate_dataset_json/DTD.py`` reads; the 12
categories are that script's list. That script pairs masks with images by sorted position rather than by
name, so the mask naming was not checked here: masks are matched by stem (``<stem>_mask``, ``<stem>``, ...)
and, failing that, by position as the script does.
"""

from __future__ import annotations

from anomaly_vlm.data.datasets.layout import RELEASE_MASK_SUFFIXES, MVTecLayout

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


class DTDSynthetic(MVTecLayout):
    """DTD-Synthetic. Class names in prompts default to the folder names, as in the official code.

    Options (``root``: the folder holding the 12 texture folders; ``categories``, ``class_names``,
    ``max_image_pixels``) as for every MVTec-style dataset
    (:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`).
    """

    name = "dtd_synthetic"
    title = "DTD-Synthetic"
    known_categories = DTD_CATEGORIES
    mask_suffixes = RELEASE_MASK_SUFFIXES
    pair_masks_by_position = True
