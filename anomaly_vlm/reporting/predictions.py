"""``save_predictions=true``: every score, map and mask exactly as the evaluator saw them.

Layout under ``<run>/predictions/``: ``scores.csv`` (path, category, label, score) and per category
``<category>/anomaly_maps.npz`` and ``<category>/masks.npz`` keyed by the image path relative to the
category folder, so anyone can recompute every metric from these files.
"""

from __future__ import annotations

import csv
from collections import defaultdict
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
        self._rows: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self._maps: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        self._masks: dict[str, dict[str, np.ndarray]] = defaultdict(dict)

    def add(self, paths, categories, labels, scores, maps, masks) -> None:
        for index, (path, category) in enumerate(zip(paths, categories, strict=True)):
            key = path_within_category(path, category)
            self._rows[category].append((path, int(labels[index])))
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
                writer.writerow(["path", "category", "label", "score"])
            for (path, label), score in zip(rows, final_scores, strict=True):
                writer.writerow([path, category, label, f"{float(score):.8g}"])
        category_dir = self.folder / category
        maps, masks = self._maps.pop(category, {}), self._masks.pop(category, {})
        if maps:
            category_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(category_dir / "anomaly_maps.npz", **maps)
        if masks:
            category_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(category_dir / "masks.npz", **masks)
