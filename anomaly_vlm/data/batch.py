"""The one typed batch that flows from the datamodule through a method to the evaluator."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Sample:
    """One image on disk and what is known about it.

    Attributes:
        path: image file.
        category: dataset category (folder name), e.g. ``bottle``.
        label: 0 normal, 1 anomalous, -1 unknown (unlabelled prediction).
        defect_type: ``good`` for normal images, else the defect folder name.
        mask_path: ground-truth mask file, or a folder of mask files of this image (fused by a pixel-wise
            OR, e.g. MVTec LOCO); None for normal images and for datasets without masks.
    """

    path: str
    category: str
    label: int
    defect_type: str = "good"
    mask_path: str | None = None


@dataclass
class AnomalyBatch:
    """A batch of images with their labels and masks (predictions are the method's ``Prediction``).

    Attributes:
        image: ``[B, 3, H, W]`` RGB in ``[0, 1]``, resized to the model input size (normalisation is
            the backbone's job).
        label: ``[B]`` 0/1 (-1 when unknown).
        mask: ``[B, H, W]`` binary float ground truth at the input size; zeros for normal images; None
            when the dataset has no masks for this batch.
        category, path, defect_type: per-image strings.
        digest: per image the SHA-256 of its file's bytes (the feature-cache key; qualified by the data
            geometry unless ``squash``), None for an image that is not a file's pixels (a mosaic); None when
            the batch was built without digests.
        map_size: ``(H, W)`` the methods' maps must have, when it is not the input's size: the files'
            own resolution with ``datamodule.evaluation_resolution=file`` (``mask`` is then at that size
            too; one size per batch). None: the input's ``H, W``.
    """

    image: Tensor
    label: Tensor
    category: list[str]
    path: list[str]
    defect_type: list[str]
    mask: Tensor | None = None
    digest: list[str | None] | None = None
    map_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> AnomalyBatch:
        """Move every tensor to ``device`` (strings stay)."""
        moved = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Tensor):
                value = value.to(device)
            moved[item.name] = value
        return AnomalyBatch(**moved)


def collate_samples(items: list[dict]) -> AnomalyBatch:
    """Collate dataset items (dicts from :class:`~anomaly_vlm.data.dataset.AnomalyImageDataset`)."""
    masks = [item["mask"] for item in items]
    sizes = {item.get("map_size") for item in items}
    if len(sizes) > 1:
        raise ValueError(f"a batch holds images whose maps differ in size: {sorted(map(str, sizes))}")
    return AnomalyBatch(
        image=torch.stack([item["image"] for item in items]),
        label=torch.tensor([item["label"] for item in items], dtype=torch.long),
        category=[item["category"] for item in items],
        path=[item["path"] for item in items],
        defect_type=[item["defect_type"] for item in items],
        mask=None if any(mask is None for mask in masks) else torch.stack(masks),
        digest=[item.get("digest") for item in items],
        map_size=sizes.pop(),
    )
