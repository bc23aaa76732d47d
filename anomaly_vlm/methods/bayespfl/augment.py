"""Bayes-PFL's training augmentation: the official loader's albumentations pipeline (``datasets.py``).

The official ``MyDataset.Trans`` runs, on every training image and its mask together,

1. ``Rotate(limit=30, p=0.5)``,
2. ``RandomRotate90(p=0.5)``,
3. ``RandomBrightnessContrast(p=0.5)``,
4. ``GaussNoise(p=0.5)``,
5. ``OneOf([Blur(blur_limit=3), ColorJitter(), GaussianBlur()], p=0.5)`` (one of the three, equally likely),

on the image flipped to **BGR** (``[:, :, ::-1]`` in and out), so ColorJitter's hue and saturation act on
swapped channels. The code pins albumentations 1.3.1; this project pins a 2.x release, whose defaults moved,
so every 1.3.1 default is spelled out here:

- Rotate: bilinear image, nearest mask, ``BORDER_REFLECT_101`` (2.x defaults to a constant border);
- Blur: a 3x3 box;
- ColorJitter: brightness, contrast and saturation factors in [0.8, 1.2], hue shift in [-0.2, 0.2] (2.x:
  hue [-0.5, 0.5]), in random order;
- GaussianBlur: 1.3.1 draws the kernel size from ``randrange(3, 8)`` rounded up to odd (3, 5, 7 with
  chances 1/5, 2/5, 2/5) and lets OpenCV derive sigma from it (0.8, 1.1, 1.4); 2.x draws sigma on its own,
  so the three kernels are spelled out with their weights;
- GaussNoise: per-channel noise of standard deviation in [sqrt(10), sqrt(50)] / 255 of the range. 1.3.1
  draws the variance uniformly in [10, 50]; 2.x draws the deviation uniformly (the same range), the one
  difference left.

The official code augments the image file at its own size before resizing it to 518 px; this augments the
resized training image (a uint8 round trip), so the noise and the blur kernels are relative to 518 px.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: OpenCV's sigma for a Gaussian kernel of size k when sigma is 0: ``0.3 ((k - 1) / 2 - 1) + 0.8``.
_KERNELS = {3: 0.8, 5: 1.1, 7: 1.4}
#: albumentations 1.3.1's chances of the kernel sizes: ``randrange(3, 8)``, even sizes rounded up.
_KERNEL_WEIGHTS = {3: 0.2, 5: 0.4, 7: 0.4}


def official_pipeline():
    """The official ``img_trans`` (albumentations 1.3.1 defaults, spelled out for 2.x)."""
    import albumentations as A
    import cv2

    gaussian_blurs = [
        A.GaussianBlur(blur_limit=(size, size), sigma_limit=(sigma, sigma), p=_KERNEL_WEIGHTS[size])
        for size, sigma in _KERNELS.items()
    ]
    return A.Compose(
        [
            A.Rotate(
                limit=(-30, 30),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(
                brightness_limit=(-0.2, 0.2), contrast_limit=(-0.2, 0.2), brightness_by_max=True, p=0.5
            ),
            A.GaussNoise(std_range=(math.sqrt(10) / 255, math.sqrt(50) / 255), per_channel=True, p=0.5),
            A.OneOf(
                [
                    A.Blur(blur_limit=(3, 3), p=0.5),
                    A.ColorJitter(
                        brightness=(0.8, 1.2),
                        contrast=(0.8, 1.2),
                        saturation=(0.8, 1.2),
                        hue=(-0.2, 0.2),
                        p=0.5,
                    ),
                    # One entry of weight 0.5 for GaussianBlur, its kernel drawn by the nested OneOf.
                    A.OneOf(gaussian_blurs, p=0.5),
                ],
                p=0.5,
            ),
        ],
        is_check_shapes=False,
    )


def reseed(node: Any, sequence: np.random.SeedSequence) -> None:
    """Seed ``node`` and, below it, every transform with a seed of its own.

    albumentations' ``set_random_seed`` gives every transform of a composition the same seed, so their
    first draws (whether each applies, p 0.5) would be the same number: the four steps would apply
    together or not at all.
    """
    from albumentations.core.composition import BaseCompose

    children = list(node.transforms) if isinstance(node, BaseCompose) else []
    sequences = sequence.spawn(1 + len(children))
    node.set_random_seed(int(sequences[0].generate_state(1)[0]))
    for child, child_sequence in zip(children, sequences[1:], strict=True):
        reseed(child, child_sequence)


class OfficialAugmentation:
    """The official training augmentation of a batch, reproducible from a seed.

    Args:
        seed: with the epoch and the batch index, the seed of the draws (the run seed); the official
            draws come from the global generators of its loader workers, which no seed reproduces.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.pipeline = official_pipeline()

    def batch_seed(self, epoch: int, batch_index: int) -> int:
        return (self.seed * 1_000_003 + int(epoch) * 100_003 + int(batch_index)) % (2**32)

    def __call__(self, images: Tensor, masks: Tensor, epoch: int, batch_index: int) -> tuple[Tensor, Tensor]:
        """Augment ``[B, 3, H, W]`` images in ``[0, 1]`` (RGB) and their ``[B, H, W]`` masks together.

        Returns:
            The augmented images (``[0, 1]``, RGB, on the input's device and dtype) and binary masks.
        """
        reseed(self.pipeline, np.random.SeedSequence(self.batch_seed(epoch, batch_index)))
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        binary = (masks.detach().float() > 0.5).to(torch.uint8).cpu().numpy()
        out_images, out_masks = [], []
        for image, mask in zip(pixels, binary, strict=True):
            # The official Trans flips RGB to BGR before the pipeline and back after it.
            result = self.pipeline(image=np.ascontiguousarray(image[:, :, ::-1]), mask=mask)
            out_images.append(np.ascontiguousarray(result["image"][:, :, ::-1]))
            out_masks.append(result["mask"])
        augmented = torch.from_numpy(np.stack(out_images)).permute(0, 3, 1, 2).float() / 255
        moved = torch.from_numpy(np.stack(out_masks)).float()
        return augmented.to(images.device, images.dtype), moved.to(masks.device, masks.dtype)


__all__ = ["OfficialAugmentation", "official_pipeline", "reseed"]
