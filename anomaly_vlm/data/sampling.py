"""Few-shot reference draws (k normal training images per category, seeded, without replacement) and the
order of the training items (a seeded shuffle per epoch)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from anomaly_vlm.data.batch import Sample
from anomaly_vlm.wording import counted

#: Last entry of the seed of the training order's draws (``[seed, epoch, 0, ORDER_STREAM]``); the
#: synthesized defects and the mosaics draw from other streams of the same seed.
ORDER_STREAM = 3


class ShotsError(ValueError):
    """``shots`` cannot be satisfied by the data."""


#: How the references are chosen (``datamodule.reference_draw``).
REFERENCE_DRAWS = ("random", "sorted_slices")


def check_reference_draw(rule: str) -> None:
    """Refuse a ``datamodule.reference_draw`` that is not one of :data:`REFERENCE_DRAWS`."""
    if rule not in REFERENCE_DRAWS:
        choices = ", ".join(REFERENCE_DRAWS)
        raise ShotsError(f"datamodule.reference_draw={rule} is not a draw; choose one of {choices}")


def draw_references(
    train_samples: list[Sample], shots: int, seed: int, category: str, rule: str = "random"
) -> list[Sample]:
    """Draw ``shots`` normal images of one category.

    ``random`` (the project's protocol): a seeded draw without replacement that depends only on
    (seed, category, the sorted file list), so it is reproducible across machines and independent of
    which other categories run in the job. The official APRIL-GAN code samples with replacement; we
    never repeat an image.

    ``sorted_slices`` (AnomalyDINO's official protocol): the file-name-sorted normal images
    ``[seed * shots, (seed + 1) * shots)``, so the draws of seeds 0, 1, 2 are disjoint and involve
    no random generator.
    """
    check_reference_draw(rule)
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
    if rule == "sorted_slices":
        by_name = sorted(normal, key=lambda sample: Path(sample.path).name)
        start = int(seed) * shots
        if start + shots > len(by_name):
            raise ShotsError(
                f"datamodule.reference_draw=sorted_slices with shots={shots} and reference_seed={seed} needs "
                f"images {start}..{start + shots - 1} of category '{category}', which has only "
                f"{counted(len(normal), 'normal training image')}"
            )
        return by_name[start : start + shots]
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


def epoch_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(epoch, index)`` of a training dataset key (see
    :class:`~anomaly_vlm.data.defect_synthesis.EpochSampler`); a plain index is epoch 0."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)


class ShuffledOrder(Sampler[int]):
    """A new random order of ``range(length)`` every epoch, a function of ``(seed, epoch)`` alone.

    Not drawn from the global torch generator (as a plain ``RandomSampler`` is): the order of an epoch
    is then the same whether the loader runs in this process or in workers, and whether the training
    ran from the start or resumed at this epoch.

    Args:
        length: how many items.
        seed: with the epoch, the seed of the order.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (Lightning calls it before every training epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1  # iterated without set_epoch, each pass is the next epoch
        order = np.random.default_rng([self.seed, epoch, 0, ORDER_STREAM]).permutation(self.length)
        return iter(order.tolist())
