"""Few-shot reference draws: k normal training images per category, seeded, without replacement."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.wording import counted


class ShotsError(ValueError):
    """``shots`` cannot be satisfied by the data."""


def draw_references(train_samples: list[Sample], shots: int, seed: int, category: str) -> list[Sample]:
    """Draw ``shots`` normal images of one category.

    The draw depends only on (seed, category, the sorted file list), so it is reproducible across
    machines and independent of which other categories run in the job. The official APRIL-GAN code
    samples with replacement; we never repeat an image.
    """
    if shots < 0:
        raise ShotsError(f"shots={shots} is negative; use 0 for zero-shot or a positive number of references")
    normal = [sample for sample in train_samples if sample.label == 0]
    if shots > len(normal):
        raise ShotsError(
            f"shots={shots} but category '{category}' has only "
            f"{counted(len(normal), 'normal training image')}"
        )
    if shots == 0:
        return []
    rng = np.random.default_rng([int(seed), zlib.crc32(category.encode())])
    chosen = rng.choice(len(normal), size=shots, replace=False)
    return [normal[int(index)] for index in chosen]


def write_reference_log(path: Path, draws: dict[str, list[Sample]], shots: int, seed: int) -> None:
    """Record which files were the references of each category (``references.json``)."""
    payload = {
        "shots": shots,
        "seed": seed,
        "references": {category: [sample.path for sample in samples] for category, samples in draws.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
