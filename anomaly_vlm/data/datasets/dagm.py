"""DAGM 2007 (weakly supervised texture defects; Kaggle upload "DAGM_KaggleUpload"): 10 texture classes.

As downloaded (the layout AnomalyCLIP's ``generate_dataset_json/DAGM.py`` and the authors of
``mixed-segdec-net-comind2021/data/input_dagm.py`` read)::

    <root>/Class<k>/{Train,Test}/<id>.PNG
    <root>/Class<k>/{Train,Test}/Label/<id>_label.PNG

An image is defective exactly when its ``Label/<id>_label.PNG`` exists (both readers decide so; the
``Labels.txt`` beside the masks is not read). Zero-shot protocol: the ``Test`` folder of every class;
the normal images of ``Train`` serve as few-shot references. Prompts use the folder names ``Class1`` ...
as the official code does. Folder names are matched case-insensitively (``Test``/``test``).
"""

from __future__ import annotations

from pathlib import Path

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datasets.base import NORMAL, Split
from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.image_io import DataError, list_images

DAGM_CATEGORIES = tuple(f"Class{k}" for k in range(1, 11))


def _child(folder: Path, name: str) -> Path:
    """``folder/name`` matched case-insensitively (the release writes ``Train``/``Test``/``Label``)."""
    exact = folder / name
    if exact.is_dir() or not folder.is_dir():
        return exact
    for child in folder.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return exact


class DAGM(MVTecLayout):
    """DAGM 2007 as downloaded: not MVTec's layout, so it lists its own samples.

    Options (``root``: the folder holding ``Class1`` ... ``Class10``; ``categories``, ``class_names``,
    ``max_image_pixels``) as for every MVTec-style dataset
    (:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`).
    """

    name = "dagm"
    title = "DAGM 2007"
    known_categories = DAGM_CATEGORIES

    def available_categories(self) -> list[str]:
        self._check_root()
        present = [c for c in DAGM_CATEGORIES if _child(self.root / c, "Test").is_dir()]
        if not present:
            raise DataError(f"DAGM 2007: no Class<k>/Test/ folder under {self.root}")
        return present

    def samples(self, category: str, split: Split) -> list[Sample]:
        key = (category, split)
        if key in self._cache:
            return self._cache[key]
        folder = _child(self.root / category, "Test" if split == "test" else "Train")
        labels = _child(folder, "Label")
        records = []
        for image in list_images(folder):
            candidates = [labels / f"{image.stem}_label{ext}" for ext in (".PNG", ".png")]
            mask = next((candidate for candidate in candidates if candidate.is_file()), None)
            if mask is None:
                records.append(Sample(str(image), category, 0, NORMAL, None))
            elif split == "test":
                records.append(Sample(str(image), category, 1, "defect", str(mask)))
        if not records:
            raise DataError(f"DAGM 2007: no images under {folder}")
        self._cache[key] = records
        return records
