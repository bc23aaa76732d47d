"""results.json fixtures laid out as the analysis sweeps write them (no job runs)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")


def _set(config: dict, key: str, value) -> None:
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


class ResultsFactory:
    """Writes complete results.json files under ``<root>/train/multiruns/analysis-<scale>-<part>/<job>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def write(
        self,
        part: str,
        *,
        method: str,
        score: float,
        pixel: float | None = None,
        shots: int = 0,
        seed: int = 0,
        reference_seed: int | None = None,
        dataset: str = "synthetic",
        train_dataset: str | None = None,
        backbone: str = "tiny",
        config: dict | None = None,
        efficiency: dict | None = None,
        scale: str = "tiny",
    ) -> Path:
        self.count += 1
        base = {
            "method": {"_target_": f"m.{method}"},
            "backbone": {"image_size": 128, "model": backbone},
            "data": {"categories": ["disc", "nut"], "image_size": 128},
            "paths": {"output_dir": f"job{self.count}"},
            "seed": seed,
        }
        for key, value in (config or {}).items():
            _set(base, key, value)
        mean = {name: score for name in METRICS}
        if pixel is not None:
            mean.update({name: pixel for name in METRICS if name.startswith("pixel")})
        payload = {
            "schema_version": 1,
            "status": "complete",
            "method": method,
            "backbone": backbone,
            "prompts": "p",
            "dataset": dataset,
            "train_dataset": train_dataset,
            "shots": shots,
            "seed": seed,
            "reference_seed": reference_seed,
            "metrics": {"mean": mean, "per_category": {"disc": dict(mean)}},
            "efficiency": efficiency or {},
            "versions": {"python": "3.11", "torch": "2.x"},
            "git": {"commit": "abc123", "dirty": False},
            "created": f"2026-01-01T00:00:{self.count:02d}",
            "config": copy.deepcopy(base),
        }
        path = (
            self.root
            / "train"
            / "multiruns"
            / f"analysis-{scale}-{part}"
            / f"job{self.count}"
            / "results.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
        return path


@pytest.fixture
def results(tmp_path: Path) -> ResultsFactory:
    return ResultsFactory(tmp_path / "outputs")


def add_predictions(results_json: Path, category: str = "disc", size: int = 40) -> dict:
    """Saved predictions beside a fixture results.json (real image files, maps, masks, defect types) and the
    run's decision thresholds: 2 normal images, one 'scratch' (a 2x2 region, missed: its map stays low and
    it scores lowest) and one 'hole' (a 10x10 region, found). Returns what was written."""
    import numpy as np
    from PIL import Image

    from anomaly_vlm.reporting.predictions import PredictionWriter

    folder = results_json.parent
    kinds = ["good", "good", "scratch", "hole"]
    paths, maps, masks = [], [], []
    for index, kind in enumerate(kinds):
        path = folder / "data" / category / "test" / kind / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size, 3), 60 * index, np.uint8)).save(path)
        paths.append(str(path))
        anomaly_map = np.full((size, size), 0.1, np.float32)
        mask = np.zeros((size, size), bool)
        if kind == "scratch":
            mask[5:7, 5:7] = True  # 4 px: 0.25 % of the image
        if kind == "hole":
            mask[20:30, 20:30] = True  # 100 px: 6.25 %
            anomaly_map[20:30, 20:30] = 0.9
        maps.append(anomaly_map)
        masks.append(mask)
    scores = np.array([0.2, 0.5, 0.1, 0.9])  # the scratch scores below both normal images
    writer = PredictionWriter(folder / "predictions")
    writer.add(paths, [category] * 4, [0, 0, 1, 1], scores, np.stack(maps), np.stack(masks), kinds)
    writer.finish_category(category, scores)
    payload = json.loads(results_json.read_text())
    payload["decisions"] = {"thresholds": {category: {"image": 0.6, "pixel": 0.5, "method": "normal_fpr"}}}
    results_json.write_text(json.dumps(payload))
    return {"paths": paths, "scores": scores}
