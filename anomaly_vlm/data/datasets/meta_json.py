"""Any dataset converted for APRIL-GAN / AnomalyCLIP: their ``meta.json`` (``data=meta_json``).

The official conversion scripts (AnomalyCLIP ``generate_dataset_json/*.py``, VAND-APRIL-GAN
``data/*.py``) write::

    {"train": {<class>: [entry, ...]}, "test": {<class>: [entry, ...]}}
    entry = {"img_path": ..., "mask_path": ..., "cls_name": ..., "specie_name": ..., "anomaly": 0 | 1}

with paths relative to the dataset root (the folder holding ``meta.json``); ``mask_path`` is ``""`` for
normal images. The readers (``dataset.py`` of both repos) take the categories from the keys of the split,
binarise masks at ``> 0`` and, in AnomalyCLIP's, treat an anomalous entry whose mask path is empty or a
folder as "classification only" (no mask). Here such a category reports image metrics only; a category
where some anomalous entries have masks and others not is an error, since pixel metrics over a subset
would be silently wrong. The DAGM script writes ``Train``/``Test``: split keys are matched
case-insensitively. Prompts use the class key (``cls_name``) as the official code does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import NORMAL, DatasetSource, Split
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError
from anomaly_vlm.untrusted import UntrustedFileError, read_json

ENTRY_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")


class MetaJSON(DatasetSource):
    """A dataset described by an APRIL-GAN/AnomalyCLIP ``meta.json``.

    Args:
        root: dataset root the paths in the file are relative to.
        meta: the file; relative paths are taken from ``root`` (default ``meta.json``).
        categories: subset of the file's classes; None means all.
        class_names: category -> words used in prompts (default the class key).
        name: dataset name used in results and tables (``data.name``), so two converted datasets do not
            share one table; default ``meta_json``.
        require_masks: an anomalous entry without a mask is an error (set for ``train_data=meta_json``:
            training on an anomalous image with an all-zero mask would teach the opposite).
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "meta_json"

    def __init__(
        self,
        root: str | Path,
        meta: str | Path = "meta.json",
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        name: str | None = None,
        require_masks: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(categories, class_names=class_names, max_image_pixels=max_image_pixels)
        self.root = Path(root).expanduser()
        path = Path(meta).expanduser()
        self.meta = path if path.is_absolute() else self.root / path
        if name:
            self.name = str(name)
        self.require_masks = require_masks
        self._payload: dict[str, dict] | None = None
        self._cache: dict[tuple[str, str], list[Sample]] = {}

    def _splits(self) -> dict[str, dict]:
        if self._payload is None:
            if not self.meta.is_file():
                raise DataError(f"meta.json not found: {self.meta} (set data.root, or data.meta=<file>)")
            try:
                # A meta.json is handed over with a dataset: size and nesting are bounded before parsing.
                payload = read_json(self.meta, what="meta.json")
            except UntrustedFileError as error:
                raise DataError(str(error)) from None
            except OSError as error:
                raise DataError(f"cannot read {self.meta}: {error}") from error
            if not isinstance(payload, dict):
                kind = type(payload).__name__
                raise DataError(f"{self.meta}: expected an object with 'train' and 'test', got {kind}")
            splits = {str(key).lower(): value for key, value in payload.items()}
            if "test" not in splits or not isinstance(splits["test"], dict):
                raise DataError(
                    f"{self.meta}: no 'test' split ({{class: [entries]}}); keys are {list(payload)}"
                )
            for split, classes in splits.items():
                if not isinstance(classes, dict):
                    raise DataError(f"{self.meta}: '{split}' must map class names to lists of entries")
            self._payload = splits
        return self._payload

    def available_categories(self) -> list[str]:
        return list(self._splits()["test"])

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        entries = self._splits().get(split, {}).get(category)
        if entries is None:
            raise DataError(f"{self.meta}: no '{split}' entries for class '{category}'")
        records = []
        for index, entry in enumerate(entries):
            where = f"{self.meta}: {split}/{category}[{index}]"
            if not isinstance(entry, dict) or any(k not in entry for k in ENTRY_KEYS):
                raise DataError(f"{where} must have the keys {list(ENTRY_KEYS)}, got {entry!r}")
            if entry["anomaly"] not in (0, 1) or isinstance(entry["anomaly"], bool):
                raise DataError(f"{where}: anomaly must be 0 or 1, got {entry['anomaly']!r}")
            image = self.root / str(entry["img_path"])
            if not image.is_file():
                raise DataError(f"{where}: image not found: {image}")
            if entry["anomaly"] == 0:
                records.append(Sample(str(image), category, 0, NORMAL, None))
                continue
            mask = None
            if entry["mask_path"]:
                mask_path = self.root / str(entry["mask_path"])
                if mask_path.is_file():
                    mask = str(mask_path)
                elif not mask_path.is_dir():
                    raise DataError(f"{where}: mask not found: {mask_path}")
            if mask is None and self.require_masks:
                given = entry["mask_path"]
                raise DataError(f"{where}: anomalous entry without a mask file (mask_path={given!r})")
            records.append(Sample(str(image), category, 1, str(entry["specie_name"] or "anomaly"), mask))
        if not records:
            raise DataError(f"{self.meta}: class '{category}' has no {split} entries")
        self._cache[key] = records
        return records

    def has_masks(self, category: str) -> bool:
        anomalous = [(i, s) for i, s in enumerate(self.samples(category, "test")) if s.label == 1]
        with_mask = [s for _, s in anomalous if s.mask_path]
        if with_mask and len(with_mask) != len(anomalous):
            index, missing = next((i, s) for i, s in anomalous if not s.mask_path)
            raise DataError(
                f"{self.meta}: test/{category}[{index}] ({missing.path}) is anomalous without a mask "
                f"while other entries of '{category}' have masks; pixel metrics need all or none"
            )
        return bool(with_mask)
