"""MVTec AD (Bergmann et al., CVPR 2019): 15 categories, 1725 test images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError
from anomaly_vlm.data.source import MVTecLayout

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
    """MVTec AD in its release layout; every anomalous test image must have its mask.

    ``class_names`` (category -> words used in prompts) and ``max_image_pixels`` work as for every
    dataset source (:class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "mvtec"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(
            root, categories, require_masks=True, class_names=class_names, max_image_pixels=max_image_pixels
        )

    def available_categories(self) -> list[str]:
        self._check_root()
        return list(MVTEC_CATEGORIES)

    @property
    def categories(self) -> list[str]:
        selected = super().categories
        missing = [str(self.root / category) for category in selected if not (self.root / category).is_dir()]
        if missing:
            raise DataError(
                f"MVTec AD category folder missing: {missing} (select a subset with data.categories)"
            )
        return selected
