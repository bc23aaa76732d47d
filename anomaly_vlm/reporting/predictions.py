"""``save_predictions=true``: every score, map and mask exactly as the evaluator saw them.

Layout under ``<run>/predictions/``: ``scores.csv`` (path, category, label, score, defect_type: the
dataset's name for the kind of defect, ``good`` for normal images, recorded from the reader so no analysis
has to guess it from folder names) and per category
``<category>/anomaly_maps.npz`` and ``<category>/masks.npz`` keyed by the image path relative to the
category folder, so anyone can recompute every metric from these files.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def path_within_category(path: str, category: str) -> str:
    """``.../bottle/test/broken_large/000.png`` -> ``test/broken_large/000.png``."""
    parts = Path(path).parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == category:
            return "/".join(parts[index + 1 :])
    return Path(path).name


class PredictionWriter:
    """Accumulates a category's predictions and writes them when the category is done."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._rows: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
        self._maps: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        self._masks: dict[str, dict[str, np.ndarray]] = defaultdict(dict)

    def add(self, paths, categories, labels, scores, maps, masks, defect_types=None) -> None:
        """Keep a batch of predictions (``defect_types``: per image, None records ``unknown``)."""
        for index, (path, category) in enumerate(zip(paths, categories, strict=True)):
            key = path_within_category(path, category)
            kind = "unknown" if defect_types is None else str(defect_types[index])
            self._rows[category].append((path, int(labels[index]), kind))
            if maps is not None:
                self._maps[category][key] = maps[index].astype(np.float32)
            if masks is not None:
                self._masks[category][key] = masks[index].astype(bool)

    def finish_category(self, category: str, final_scores: np.ndarray) -> None:
        """Write the category's files; ``final_scores`` are the scores the metrics used."""
        rows = self._rows.pop(category, [])
        if len(rows) != len(final_scores):
            raise RuntimeError(f"{category}: {len(rows)} predictions but {len(final_scores)} scores")
        self.folder.mkdir(parents=True, exist_ok=True)
        scores_csv = self.folder / "scores.csv"
        new_file = not scores_csv.exists()
        with scores_csv.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["path", "category", "label", "score", "defect_type"])
            for (path, label, kind), score in zip(rows, final_scores, strict=True):
                writer.writerow([path, category, label, f"{float(score):.8g}", kind])
        category_dir = self.folder / category
        maps, masks = self._maps.pop(category, {}), self._masks.pop(category, {})
        if maps:
            category_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(category_dir / "anomaly_maps.npz", **maps)
        if masks:
            category_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(category_dir / "masks.npz", **masks)


@dataclass
class CategoryPredictions:
    """One category's saved predictions (maps and masks read lazily, one image at a time).

    Attributes:
        category: the category.
        paths: per image its file.
        keys: per image its key in the npz files.
        labels: per image 0 normal, 1 anomalous.
        scores: per image the final image score.
        defect_types: per image the defect kind the dataset names (``unknown`` in files written before
            it was recorded).
        folder: the category's folder of npz files.
    """

    category: str
    paths: list[str]
    keys: list[str]
    labels: np.ndarray
    scores: np.ndarray
    defect_types: list[str]
    folder: Path

    def _npz(self, name: str):
        file = self.folder / name
        return np.load(file) if file.is_file() else None

    def maps(self):
        """The anomaly maps by key (an open npz file; None when none were saved)."""
        return self._npz("anomaly_maps.npz")

    def masks(self):
        """The ground-truth masks by key (an open npz file; None when the category has none)."""
        return self._npz("masks.npz")


def read_predictions(folder: str | Path) -> dict[str, CategoryPredictions]:
    """The saved predictions below a run's ``predictions/`` folder, per category ({} when there are none)."""
    folder = Path(folder)
    scores_csv = folder / "scores.csv"
    if not scores_csv.is_file():
        return {}
    rows: dict[str, list[dict]] = defaultdict(list)
    with scores_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows[row["category"]].append(row)
    return {
        category: CategoryPredictions(
            category=category,
            paths=[row["path"] for row in members],
            keys=[path_within_category(row["path"], category) for row in members],
            labels=np.array([int(row["label"]) for row in members]),
            scores=np.array([float(row["score"]) for row in members]),
            defect_types=[row.get("defect_type") or "unknown" for row in members],
            folder=folder / category,
        )
        for category, members in rows.items()
    }
