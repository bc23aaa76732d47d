"""MVTec LOCO AD (Bergmann et al., IJCV 2022): 5 categories with logical and structural anomalies.

As downloaded (per category; the layout anomalib's ``mvtec_loco.py`` reads)::

    <category>/train/good/*.png
    <category>/validation/good/*.png
    <category>/test/{good,logical_anomalies,structural_anomalies}/<stem>.png
    <category>/ground_truth/{logical_anomalies,structural_anomalies}/<stem>/000.png, 001.png, ...

An anomalous image has a folder of masks, one per defect region; they are fused into one mask (pixel-wise
OR, :func:`~anomaly_vlm.data.image_io.load_mask`; anomalib's reader also takes the union). Every
non-zero pixel counts, whatever grey value a mask uses; the release's per-defect saturation thresholds for
its sPRO metric are not used: pixel metrics here are the same as for every other dataset.

Logical and structural anomalies are reported separately and together by evaluating three datasets that
share this reader: ``data=mvtec_loco`` (``anomaly_types: all``, every test image),
``data=mvtec_loco_logical`` and ``data=mvtec_loco_structural`` (the normal test images plus that kind of
anomaly). Each is its own job with its own per-category table and macro mean, so the evaluator and the
tables stay unchanged and every mean is over the same five categories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
ANOMALY_FOLDERS = {"logical": "logical_anomalies", "structural": "structural_anomalies"}


class MVTecLOCO(MVTecLayout):
    """MVTec LOCO AD with fused masks.

    Args:
        root: the folder holding the 5 category folders.
        categories: subset; None means all present.
        class_names: category -> words used in prompts (default the folder names).
        anomaly_types: ``all`` (logical and structural), ``logical`` or ``structural``.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "mvtec_loco"
    title = "MVTec LOCO AD"
    known_categories = LOCO_CATEGORIES
    mask_folder_per_image = True

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        anomaly_types: str = "all",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if anomaly_types not in ("all", *ANOMALY_FOLDERS):
            raise DataError(
                f"data.anomaly_types={anomaly_types!r} is not one of 'all', 'logical', 'structural'"
            )
        super().__init__(root, categories, class_names, max_image_pixels)
        self.anomaly_types = anomaly_types
        kinds = list(ANOMALY_FOLDERS) if anomaly_types == "all" else [anomaly_types]
        self.defect_folders = tuple(ANOMALY_FOLDERS[kind] for kind in kinds)
