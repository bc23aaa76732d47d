"""MVTec AD (Bergmann et al., CVPR 2019): 15 categories, 1725 test images."""

from __future__ import annotations

from anomaly_vlm.data.datasets.layout import MVTecLayout

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)


class MVTecAD(MVTecLayout):
    """MVTec AD in its release layout: every anomalous test image must have its ``<stem>_mask.png``, and
    every category folder must be there unless ``data.categories`` selects a subset.

    Options (``root``, ``categories``, ``class_names``, ``max_image_pixels``) as for every MVTec-style
    dataset (:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`).
    """

    name = "mvtec"
    title = "MVTec AD"
    known_categories = MVTEC_CATEGORIES
    require_all_categories = True
