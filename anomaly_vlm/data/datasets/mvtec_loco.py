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

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets._layout import NORMAL, BenchmarkLayout, image_files
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError
from anomaly_vlm.data.source import Split

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
ANOMALY_FOLDERS = {"logical": "logical_anomalies", "structural": "structural_anomalies"}


class MVTecLOCO(BenchmarkLayout):
    """MVTec LOCO AD with fused masks.

    Args:
        root: the folder holding the 5 category folders.
        categories: subset; None means all present.
        class_names: category -> words used in prompts (default the folder names).
        anomaly_types: ``all`` (logical and structural), ``logical`` or ``structural``.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "mvtec_loco"
    dataset_title = "MVTec LOCO AD"

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
        super().__init__(
            root, categories, class_names, known_categories=LOCO_CATEGORIES, max_image_pixels=max_image_pixels
        )
        self.anomaly_types = anomaly_types

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        base = self.root / category
        normal_dir = base / ("test" if split == "test" else "train") / NORMAL
        records = [Sample(str(image), category, 0, NORMAL, None) for image in image_files(normal_dir)]
        if split == "test":
            kinds = list(ANOMALY_FOLDERS) if self.anomaly_types == "all" else [self.anomaly_types]
            for kind in kinds:
                folder = ANOMALY_FOLDERS[kind]
                for image in image_files(base / "test" / folder):
                    masks = base / "ground_truth" / folder / image.stem
                    if not image_files(masks):
                        raise DataError(
                            f"MVTec LOCO AD: anomalous test image {image} has no masks; "
                            f"expected {masks}/000.png"
                        )
                    records.append(Sample(str(image), category, 1, folder, str(masks)))
        if not records:
            raise DataError(f"MVTec LOCO AD: no images under {normal_dir.parent}")
        self._cache[key] = records
        return records
