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
