"""The base of every dataset reader: where the images of each category and split are, and what they are.

A reader only lists :class:`~anomaly_vlm.data.batch.Sample` records; reading pixels is the one dataset
class's job. A dataset in MVTec AD's layout derives :class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`
and sets a few class attributes; any other layout derives :class:`DatasetSource` and implements
:meth:`~DatasetSource.available_categories` and :meth:`~DatasetSource.samples`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError, check_max_pixels
from anomaly_vlm.data.links import warn_outside_links

Split = Literal["train", "test"]
#: Defect type of every normal sample, whatever the release calls its normal folder (BTAD: ``ok``).
NORMAL = "good"


class DatasetSource:
    """Base class: a named collection of categories with train/test samples.

    Args:
        categories: subset of categories to use; None means all available.
        class_names: category -> the words used for it in prompts (``data.class_names``); they override
            :attr:`default_class_names`. The runner merges them into the prompt set's
            ``class_name_overrides`` (the data's names win), so a dataset's own vocabulary reaches every
            method without touching the prompt files.
        max_image_pixels: the most pixels (width x height) an image or mask file of this dataset may
            have (``data.max_image_pixels``); larger files are refused from their header, before
            decoding. None: no limit.

    Symlinks under the dataset folder (:meth:`link_roots`) are followed; those leading outside it are
    reported in one warning the first time the categories are listed.
    """

    #: Dataset name in results.json and the tables.
    name: str = "dataset"
    #: Whether test samples carry labels (and so can be scored by the metrics); False for ``data=images``.
    labelled: bool = True
    #: Prompt words per category where the release (or the official conversion) names them differently.
    default_class_names: Mapping[str, str] = {}

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self._requested = list(categories) if categories else None
        self._class_names = {str(key): str(value) for key, value in (class_names or {}).items()}
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        self._links_reported = False

    @property
    def class_names(self) -> dict[str, str]:
        """Prompt names of the categories that have one (the given ones checked against the categories)."""
        if self._class_names:
            available = self.available_categories()
            unknown = sorted(set(self._class_names) - set(available))
            if unknown:
                raise DataError(
                    f"data.class_names: {unknown} not in dataset '{self.name}'. Valid categories: {available}"
                )
        defaults = {
            key: value for key, value in self.default_class_names.items() if key not in self._class_names
        }
        return {**defaults, **self._class_names}

    def available_categories(self) -> list[str]:
        """All categories present in this source."""
        raise NotImplementedError

    def link_roots(self) -> list[Path]:
        """The folders this source lists files in, whose outward symlinks are reported (its ``root``)."""
        root = getattr(self, "root", None)
        return [Path(root)] if root is not None else []

    def report_outside_links(self) -> None:
        """Warn once per folder of :meth:`link_roots` about symlinks that lead outside it."""
        if getattr(self, "_links_reported", False):
            return
        self._links_reported = True
        for root in self.link_roots():
            warn_outside_links(root)

    @property
    def categories(self) -> list[str]:
        """The selected categories, validated against the available ones."""
        available = self.available_categories()
        self.report_outside_links()
        if self._requested is None:
            return available
        unknown = [category for category in self._requested if category not in available]
        if unknown:
            raise DataError(
                f"data.categories: {unknown} not in dataset '{self.name}'. Valid categories: {available}"
            )
        return list(self._requested)

    def samples(self, category: str, split: Split) -> list[Sample]:
        """All samples of one category and split, in a stable order."""
        raise NotImplementedError

    def has_masks(self, category: str) -> bool:
        """Whether anomalous test images of this category come with ground-truth masks."""
        return True
