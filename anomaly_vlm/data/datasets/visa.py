"""VisA (Zou et al., ECCV 2022, "SPot-the-Difference"): 12 categories, 10,821 images.

Two layouts are read:

* ``raw`` -- the release as downloaded::

      <root>/<category>/Data/Images/{Normal,Anomaly}/<id>.JPG
      <root>/<category>/Data/Masks/Anomaly/<id>.png
      <root>/split_csv/1cls.csv

  The split comes from the official "1cls" CSV (header ``object,split,label,image,mask``; ``label`` is
  ``normal`` or ``anomaly``; paths relative to ``root``; ``mask`` empty for normal images).
* ``prepared`` -- the MVTec-like layout the official preparation script (and anomalib, APRIL-GAN,
  AnomalyCLIP) make from that CSV: ``<root>/<category>/{train/good, test/good, test/bad,
  ground_truth/bad/<id>.png}``. Masks keep the image's stem (no ``_mask`` suffix); ``_mask`` is also
  accepted.

Masks carry defect-instance label values rather than 0/255; :func:`~anomaly_vlm.data.image_io.load_mask`
binarises them at ``> 0`` before resizing. Images are not square (e.g. 1500x1000); they are squashed to
the model input size together with their masks, as in the reference implementations.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import DatasetSource, Split
from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError

VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
SPLIT_CSV_COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_SPLIT_CSV = "split_csv/1cls.csv"
#: Defect folder name of the prepared layout (VisA has no defect types).
ANOMALOUS_FOLDER = "bad"

Layout = Literal["auto", "raw", "prepared"]


class _PreparedVisA(MVTecLayout):
    """The prepared layout: MVTec-like, masks named like their image (``_mask`` also accepted)."""

    name = "visa"
    mask_suffixes = ("", "_mask")


class VisA(DatasetSource):
    """VisA in its raw release layout (with the split CSV) or in the prepared MVTec-like layout.

    Args:
        root: dataset folder (the release folder holding the 12 category folders).
        categories: subset of the 12 categories; None means all.
        layout: ``raw``, ``prepared`` or ``auto`` (raw when ``<root>/<category>/Data`` folders or the
            split CSV exist, prepared when ``<root>/<category>/test`` folders exist).
        split_csv: the split file of the raw layout; relative paths are taken from ``root``.
        class_names: category -> words used in prompts (default: the category name).
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "visa"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        layout: Layout = "auto",
        split_csv: str | Path | None = DEFAULT_SPLIT_CSV,
        class_names: Mapping[str, str] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(categories, class_names=class_names, max_image_pixels=max_image_pixels)
        if layout not in ("auto", "raw", "prepared"):
            raise DataError(f"data.layout={layout!r} is not one of 'auto', 'raw', 'prepared'")
        self.root = Path(root).expanduser()
        self.requested_layout = layout
        split = Path(split_csv or DEFAULT_SPLIT_CSV).expanduser()
        self.split_csv = split if split.is_absolute() else self.root / split
        self._layout: str | None = None
        self._rows: dict[str, list[dict[str, str]]] | None = None
        self._prepared = _PreparedVisA(self.root, max_image_pixels=self.max_image_pixels)
        self._cache: dict[tuple[str, str], list[Sample]] = {}

    # ----- layout ---------------------------------------------------------------------------------
    def _check_root(self) -> None:
        if self.root.is_file():
            raise DataError(f"dataset root {self.root} is a file; data.root must be the VisA folder")
        if not self.root.is_dir():
            raise DataError(f"dataset root does not exist: {self.root} (set data.root or DATA_ROOT)")
        if not any(path for path in self.root.iterdir() if not path.name.startswith(".")):
            raise DataError(f"dataset root is empty: {self.root}")

    @property
    def layout(self) -> str:
        """``raw`` or ``prepared`` (detected once)."""
        if self._layout is None:
            self._check_root()
            if self.requested_layout != "auto":
                self._layout = self.requested_layout
            else:
                folders = [path for path in self.root.iterdir() if path.is_dir()]
                if self.split_csv.is_file() or any((path / "Data").is_dir() for path in folders):
                    self._layout = "raw"
                elif any((path / "test").is_dir() for path in folders):
                    self._layout = "prepared"
                else:
                    raise DataError(
                        f"{self.root} is neither the raw VisA layout (<category>/Data/Images and "
                        f"{DEFAULT_SPLIT_CSV}) nor the prepared one (<category>/test/good, test/bad)"
                    )
        return self._layout

    def _split_rows(self) -> dict[str, list[dict[str, str]]]:
        """The split CSV, grouped by category and checked row by row."""
        if self._rows is not None:
            return self._rows
        if not self.split_csv.is_file():
            raise DataError(
                f"VisA split CSV not found: {self.split_csv} (data.split_csv; the release ships "
                f"{DEFAULT_SPLIT_CSV})"
            )
        rows: dict[str, list[dict[str, str]]] = {}
        with self.split_csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = tuple(name.strip() for name in (reader.fieldnames or ()))
            if header != SPLIT_CSV_COLUMNS:
                raise DataError(
                    f"{self.split_csv}: columns are {list(header)}, expected {list(SPLIT_CSV_COLUMNS)}"
                )
            for line, row in enumerate(reader, start=2):
                row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
                if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
                    raise DataError(
                        f"{self.split_csv}, line {line}: split must be train/test and label "
                        f"normal/anomaly, got split={row['split']!r} label={row['label']!r}"
                    )
                rows.setdefault(row["object"], []).append(row)
        if not rows:
            raise DataError(f"{self.split_csv} lists no images")
        self._rows = rows
        return rows

    # ----- DatasetSource ----------------------------------------------------------------------------
    def available_categories(self) -> list[str]:
        if self.layout == "prepared":
            return self._prepared.available_categories()
        listed = self._split_rows()
        # The release order first, then anything else the CSV lists (custom splits).
        extra = sorted(category for category in listed if category not in VISA_CATEGORIES)
        return [category for category in VISA_CATEGORIES if category in listed] + extra

    @property
    def categories(self) -> list[str]:
        selected = super().categories
        missing = [str(self.root / category) for category in selected if not (self.root / category).is_dir()]
        if missing:
            raise DataError(f"VisA category folder missing: {missing} (select a subset with data.categories)")
        return selected

    def samples(self, category: str, split: Split) -> list[Sample]:
        if self.layout == "prepared":
            return self._prepared.samples(category, split)
        key = (category, split)
        if key not in self._cache:
            self._cache[key] = self._raw_samples(category, split)
        return self._cache[key]

    def _raw_samples(self, category: str, split: Split) -> list[Sample]:
        rows = self._split_rows().get(category)
        if rows is None:
            raise DataError(
                f"category '{category}' is not in {self.split_csv}. Valid categories: "
                f"{self.available_categories()}"
            )
        records = []
        for row in rows:
            if row["split"] != split:
                continue
            image = self.root / row["image"]
            if not image.is_file():
                raise DataError(f"image listed in {self.split_csv} not found: {image}")
            if row["label"] == "normal":
                records.append(Sample(str(image), category, 0, "good", None))
                continue
            mask = self.root / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                expected = mask or self.root / category / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
                raise DataError(f"anomalous test image {image} has no mask; expected {expected}")
            records.append(Sample(str(image), category, 1, ANOMALOUS_FOLDER, str(mask)))
        if not records:
            raise DataError(f"{self.split_csv} lists no {split} images of category '{category}'")
        # Sorted by file so the order (and reference draws) never depend on the CSV row order.
        return sorted(records, key=lambda sample: (sample.label, sample.path))

    def has_masks(self, category: str) -> bool:
        return any(sample.label == 1 for sample in self.samples(category, "test"))
