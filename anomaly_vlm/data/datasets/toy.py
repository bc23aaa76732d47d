"""The toy dataset (:mod:`anomaly_vlm.data.toy`) as a dataset source (``data=synthetic``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS
from anomaly_vlm.data.toy import (
    GENERATOR_VERSION,
    SYNTHETIC_CATEGORIES,
    default_synthetic_root,
    generate_synthetic_dataset,
)


class SyntheticAD(MVTecLayout):
    """The synthetic dataset as a dataset source (``data=synthetic``).

    Each argument set lives in its own subfolder of ``root``, so jobs with different settings never
    rebuild each other's files; the first job to need a set generates it (under a file lock).

    Args:
        root: cache folder holding the generated sets.
        categories: subset of :data:`SYNTHETIC_CATEGORIES`; None means all.
        image_size: side of the generated PNGs.
        generator_seed: seed of the generator (independent of the run seed, so reference draws and
            data can be varied separately).
        num_train, num_test_good, num_test_per_defect: images per split.
        class_names: category -> words used in prompts (see :class:`DatasetSource`).
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "synthetic"

    def __init__(
        self,
        root: str | Path | None = None,
        categories: Sequence[str] | None = None,
        image_size: int = 128,
        generator_seed: int = 0,
        num_train: int = 8,
        num_test_good: int = 4,
        num_test_per_defect: int = 3,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        base = Path(root).expanduser() if root else default_synthetic_root()
        variant = (
            f"v{GENERATOR_VERSION}-size{image_size}-seed{generator_seed}"
            f"-n{num_train}-{num_test_good}-{num_test_per_defect}"
        )
        super().__init__(base / variant, categories, class_names, max_image_pixels)
        self._generator_args = {
            "image_size": image_size,
            "num_train": num_train,
            "num_test_good": num_test_good,
            "num_test_per_defect": num_test_per_defect,
            "seed": generator_seed,
        }
        self._generated = False

    def _ensure_generated(self) -> None:
        if not self._generated:
            generate_synthetic_dataset(self.root, SYNTHETIC_CATEGORIES, **self._generator_args)
            self._generated = True

    def available_categories(self) -> list[str]:
        self._ensure_generated()
        return list(SYNTHETIC_CATEGORIES)

    def samples(self, category, split):
        self._ensure_generated()
        return super().samples(category, split)
