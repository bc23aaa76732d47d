"""2x2 mosaic augmentation of training images and masks (APRIL-GAN's MVTec training recipe)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.sampling import epoch_key

#: Last entry of the seed of a mosaic's draws (``[seed, epoch, index, MOSAIC_STREAM]``), apart from the
#: synthesized defects' streams of the same item.
MOSAIC_STREAM = 2
#: How a mosaic's tiles are drawn: ``any`` (APRIL-GAN's release: a defect type of the category uniformly,
#: ``good`` included, then an image of it) or ``anomalous`` (Bayes-PFL's release: an anomalous image of the
#: category uniformly, so every mosaic is anomalous).
MOSAIC_TILES = ("any", "anomalous")


class MosaicDataset(Dataset):
    """With probability ``probability`` an item is replaced by a 2x2 mosaic of four images of its category.

    As in the APRIL-GAN release, each of the four tiles is drawn independently: a defect type of the
    category uniformly (``good`` included), then an image of that type uniformly; the tiles are laid out
    row by row and the mosaic (with its mask) is resized to the input size. The item keeps its category
    (the text classifier of training is per category); its label is 1 when any tile is anomalous.

    Deviation, for the decode path only: tiles are read at the input size and the ``2S x 2S`` mosaic is
    shrunk to ``S`` (antialiased bicubic for images, bilinear + 0.5 threshold for masks), where the
    release pasted the files at their native size and resized once.

    Whether an item becomes a mosaic, and its tiles, are drawn from ``(seed, epoch, index)`` alone (keys
    are ``(epoch, index)`` from :class:`~anomaly_vlm.data.defect_synthesis.EpochSampler`; a plain index is
    epoch 0), so they do not depend on the loader's workers or on where an interrupted training resumed.

    Args:
        dataset: the training dataset (must return masks).
        probability: chance of a mosaic per item (released value 0.2, MVTec-trained models only).
        seed: with the epoch and the item, the seed of the draws.
        tiles: how the tiles are drawn, one of :data:`MOSAIC_TILES`; ``anomalous`` falls back to ``any``
            for a category without anomalous images.
    """

    #: Keys are ``(epoch, index)``.
    takes_epoch = True

    def __init__(
        self, dataset: AnomalyImageDataset, probability: float = 0.2, seed: int = 0, tiles: str = "any"
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"mosaic probability must be in [0, 1], got {probability}")
        if tiles not in MOSAIC_TILES:
            raise ValueError(f"mosaic tiles must be one of {', '.join(MOSAIC_TILES)}, got {tiles!r}")
        self.tiles = tiles
        if not dataset.with_masks:
            raise ValueError("the mosaic augmentation needs a dataset with masks")
        self.dataset = dataset
        self.probability = float(probability)
        self.seed = int(seed)
        groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, sample in enumerate(dataset.samples):
            groups[sample.category][sample.defect_type].append(index)
        self.groups = {category: dict(types) for category, types in groups.items()}
        self.anomalous = {
            category: [
                index for members in types.values() for index in members if dataset.samples[index].label == 1
            ]
            for category, types in self.groups.items()
        }
        for members in self.anomalous.values():
            members.sort()

    def __len__(self) -> int:
        return len(self.dataset)

    def _draw_tile(self, category: str, rng: np.random.Generator) -> int:
        if self.tiles == "anomalous" and self.anomalous[category]:
            members = self.anomalous[category]
            return members[int(rng.integers(len(members)))]
        types = sorted(self.groups[category])
        members = self.groups[category][types[int(rng.integers(len(types)))]]
        return members[int(rng.integers(len(members)))]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = epoch_key(key)
        item = self.dataset[index]
        rng = np.random.default_rng([self.seed, epoch, index, MOSAIC_STREAM])
        if self.probability == 0.0 or rng.random() >= self.probability:
            return item
        tiles = [self.dataset[self._draw_tile(item["category"], rng)] for _ in range(4)]
        size = self.dataset.image_size
        image = torch.cat(
            [
                torch.cat([tiles[0]["image"], tiles[1]["image"]], dim=2),
                torch.cat([tiles[2]["image"], tiles[3]["image"]], dim=2),
            ],
            dim=1,
        )
        mask = torch.cat(
            [
                torch.cat([tiles[0]["mask"], tiles[1]["mask"]], dim=1),
                torch.cat([tiles[2]["mask"], tiles[3]["mask"]], dim=1),
            ],
            dim=0,
        )
        image = F.interpolate(
            image[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )
        mask = F.interpolate(
            mask[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        return {
            **item,
            "image": image[0].clamp(0.0, 1.0),
            "mask": (mask[0, 0] > 0.5).float(),
            "label": int(max(tile["label"] for tile in tiles)),
            "defect_type": "mosaic",
            "path": "+".join(tile["path"] for tile in tiles),
            "digest": None,  # not any file's pixels: bypasses the feature cache
        }
