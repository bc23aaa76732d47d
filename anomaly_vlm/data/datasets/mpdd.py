"""MPDD, Metal Parts Defect Detection (Jezek et al., ICUMT 2021): 6 categories of metal parts.

Released in MVTec AD's layout (``<category>/{train/good, test/good, test/<defect>,
ground_truth/<defect>/<stem>_mask.png}``); the category list is the one of AnomalyCLIP's conversion script
(``generate_dataset_json/mpdd.py``), which the VLM papers used. Zero-shot protocol: every test image.
"""

from __future__ import annotations

from anomaly_vlm.data.datasets.layout import RELEASE_MASK_SUFFIXES, MVTecLayout

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


class MPDD(MVTecLayout):
    """MPDD as downloaded. Class names in prompts default to the folder names, as in the official code.

    Options (``root``, ``categories``, ``class_names``, ``max_image_pixels``) as for every MVTec-style
    dataset (:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`).
    """

    name = "mpdd"
    title = "MPDD"
    known_categories = MPDD_CATEGORIES
    mask_suffixes = RELEASE_MASK_SUFFIXES
    pair_masks_by_position = True
