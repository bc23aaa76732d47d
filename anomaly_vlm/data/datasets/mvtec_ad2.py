"""MVTec AD 2 (Heckler-Kram et al., arXiv preprint): 8 categories, advanced scenarios.

As downloaded (per category)::

    <category>/train/good/*.png
    <category>/validation/good/*.png
    <category>/test_public/{good,bad}/*.png
    <category>/test_public/ground_truth/bad/<stem>_mask.png
    <category>/test_private/*.png            (no ground truth)
    <category>/test_private_mixed/*.png      (no ground truth)

Only ``test_public`` has ground truth, so it is the evaluated split; the private test sets are scored by
MVTec's evaluation server and cannot be evaluated here (score them with ``mode=predict`` and submit).
Layout and mask naming as in anomalib's ``mvtecad2.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.datasets.layout import RELEASE_MASK_SUFFIXES, MVTecLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError

MVTEC_AD2_CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
PUBLIC_TEST = "test_public"
PRIVATE_TESTS = ("test_private", "test_private_mixed")


class MVTecAD2(MVTecLayout):
    """MVTec AD 2, public test split.

    Args:
        root: the folder holding the 8 category folders.
        categories: subset; None means all present.
        class_names: category -> words used in prompts.
        test_split: must be ``test_public`` (the private splits have no ground truth).
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "mvtec_ad2"
    title = "MVTec AD 2"
    known_categories = MVTEC_AD2_CATEGORIES
    test_folder = PUBLIC_TEST
    ground_truth = f"{PUBLIC_TEST}/ground_truth"
    mask_suffixes = RELEASE_MASK_SUFFIXES
    pair_masks_by_position = True

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        test_split: str = PUBLIC_TEST,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if test_split in PRIVATE_TESTS:
            raise DataError(
                f"data.test_split={test_split}: MVTec AD 2's private test sets have no public ground truth "
                f"and cannot be evaluated here; use {PUBLIC_TEST}, or score them with mode=predict "
                "data.path=<category>/" + test_split
            )
        if test_split != PUBLIC_TEST:
            raise DataError(f"data.test_split={test_split!r} is not '{PUBLIC_TEST}'")
        super().__init__(root, categories, class_names, max_image_pixels)
