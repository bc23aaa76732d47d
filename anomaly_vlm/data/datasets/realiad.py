"""Real-IAD (Wang et al., CVPR 2024): 30 objects, five camera views per object, JSON split files.

As downloaded (the authors' example repository, Tencent/AnomalyDetection_Real-IAD)::

    <root>/realiad_1024/<category>/...            images (*.jpg) and masks (*.png); also realiad_512,
                                                  realiad_256, realiad_raw at other resolutions
    <root>/realiad_jsons/<category>.json          multi-view split (all five views)
    <root>/realiad_jsons_sv/<category>.json       single-view split (the authors' "C1" experiment)

Some copies nest the split folders one level deeper (``realiad_jsons/realiad_jsons_sv/``); both are found.
A split file is ``{"meta": {"prefix": ..., "normal_class": "OK"}, "train": [...], "test": [...]}``; an entry
has ``category``, ``anomaly_class``, ``image_path`` and ``mask_path`` with paths relative to
``<image_dir>/<meta.prefix>``. As in the authors' reader, a test entry is normal when its ``anomaly_class``
is the normal class *or* its ``mask_path`` is null (a defective part seen from a view where the defect is
not visible); training entries are all normal.

Single view by default (``data.json_dir: realiad_jsons_sv``). ``data.view: <k>`` keeps only images of
camera ``C<k>`` (the ``_C<k>_`` token in the file name; use it with ``json_dir: realiad_jsons``). Which
camera the single-view files hold was not checked here; the filter makes any choice explicit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import NORMAL, Split
from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError
from anomaly_vlm.untrusted import UntrustedFileError, read_json

REALIAD_CATEGORIES = (
    "audiojack",
    "bottle_cap",
    "button_battery",
    "end_cap",
    "eraser",
    "fire_hood",
    "mint",
    "mounts",
    "pcb",
    "phone_battery",
    "plastic_nut",
    "plastic_plug",
    "porcelain_doll",
    "regulator",
    "rolled_strip_base",
    "sim_card_set",
    "switch",
    "tape",
    "terminalblock",
    "toothbrush",
    "toy",
    "toy_brick",
    "transistor1",
    "u_block",
    "usb",
    "usb_adaptor",
    "vcpill",
    "wooden_beads",
    "woodstick",
    "zipper",
)
ENTRY_KEYS = ("category", "anomaly_class", "image_path", "mask_path")


class RealIAD(MVTecLayout):
    """Real-IAD from its JSON split files.

    Args:
        root: the folder holding ``realiad_1024/`` and the ``realiad_jsons*`` folders.
        categories: subset of the 30 objects; None means every object with a split file.
        class_names: category -> words used in prompts (default the object names).
        json_dir: split folder below ``root`` (``realiad_jsons_sv`` single view, ``realiad_jsons`` all views).
        image_dir: image folder below ``root`` (``realiad_1024``, ``realiad_512``, ...).
        view: keep only camera ``C<view>`` images (1..5); None keeps what the split file lists.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
    """

    name = "realiad"
    title = "Real-IAD"
    known_categories = REALIAD_CATEGORIES

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        json_dir: str = "realiad_jsons_sv",
        image_dir: str = "realiad_1024",
        view: int | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(root, categories, class_names, max_image_pixels)
        self.json_dir_name = json_dir
        self.image_dir = self.root / image_dir
        if view is not None and int(view) not in range(1, 6):
            raise DataError(f"data.view={view!r}: Real-IAD has views 1..5 (or null for all listed)")
        self.view = None if view is None else int(view)
        self._splits: dict[str, dict] = {}

    @property
    def json_dir(self) -> Path:
        """The split folder (directly under the root, or nested under ``realiad_jsons/``)."""
        self._check_root()
        for candidate in (self.root / self.json_dir_name, self.root / "realiad_jsons" / self.json_dir_name):
            if candidate.is_dir() and any(candidate.glob("*.json")):
                return candidate
        raise DataError(
            f"Real-IAD split folder not found: {self.root / self.json_dir_name} (data.json_dir; the release "
            "ships realiad_jsons/ and realiad_jsons_sv/)"
        )

    def available_categories(self) -> list[str]:
        listed = {path.stem for path in self.json_dir.glob("*.json")}
        known = [c for c in REALIAD_CATEGORIES if c in listed]
        return known + sorted(listed - set(REALIAD_CATEGORIES))

    def _split_file(self, category: str) -> dict:
        if category not in self._splits:
            path = self.json_dir / f"{category}.json"
            try:
                # Split files come with the download or from colleagues: size and nesting are bounded.
                payload = read_json(path, what="Real-IAD split file")
            except UntrustedFileError as error:
                raise DataError(str(error)) from None
            except OSError as error:
                raise DataError(f"cannot read Real-IAD split file {path}: {error}") from error
            if not isinstance(payload, dict) or not all(key in payload for key in ("meta", "train", "test")):
                raise DataError(f"{path}: expected the keys 'meta', 'train' and 'test'")
            if not isinstance(payload["meta"], dict) or not all(
                isinstance(payload[split], list) for split in ("train", "test")
            ):
                raise DataError(f"{path}: expected 'meta' to be an object and 'train', 'test' lists")
            payload["_path"] = str(path)
            self._splits[category] = payload
        return self._splits[category]

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        payload = self._split_file(category)
        path = payload["_path"]
        meta = payload["meta"]
        prefix = self.image_dir / str(meta.get("prefix") or "")
        normal_class = meta.get("normal_class", "OK")
        view_token = re.compile(rf"_C{self.view}_") if self.view else None
        records = []
        for index, entry in enumerate(payload[split]):
            if not isinstance(entry, dict) or any(k not in entry for k in ENTRY_KEYS):
                raise DataError(
                    f"{path}: {split}[{index}] must have the keys {list(ENTRY_KEYS)}, got {entry!r}"
                )
            if view_token and not view_token.search(Path(entry["image_path"]).name):
                continue
            image = prefix / entry["image_path"]
            if not image.is_file():
                raise DataError(f"{path}: {split}[{index}] image not found: {image}")
            normal = split == "train" or entry["mask_path"] is None or entry["anomaly_class"] == normal_class
            if normal:
                records.append(Sample(str(image), category, 0, NORMAL, None))
                continue
            mask = prefix / entry["mask_path"]
            if not mask.is_file():
                raise DataError(f"{path}: {split}[{index}] mask not found: {mask}")
            records.append(Sample(str(image), category, 1, str(entry["anomaly_class"]), str(mask)))
        if not records:
            view = f" of view C{self.view}" if self.view else ""
            raise DataError(f"{path} lists no {split} images{view}")
        records.sort(key=lambda sample: (sample.label, sample.path))
        self._cache[key] = records
        return records
