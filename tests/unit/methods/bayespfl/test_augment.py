"""Bayes-PFL's training augmentation: the official albumentations pipeline, on BGR, seeded, masks moved."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from anomaly_vlm.methods.bayespfl.augment import OfficialAugmentation, official_pipeline


def _square_batch(count: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """White off-centre squares on black, their masks the squares (a rotation moves both or neither)."""
    images, masks = torch.zeros(count, 3, size, size), torch.zeros(count, size, size)
    for index in range(count):
        top, left = 6 + 3 * index, 10 + 2 * index
        images[index, :, top : top + 20, left : left + 14] = 1.0
        masks[index, top : top + 20, left : left + 14] = 1.0
    return images, masks


def test_the_pipeline_is_the_official_one_with_its_1_3_1_defaults() -> None:
    pipeline = official_pipeline()
    steps = pipeline.transforms
    assert [type(step).__name__ for step in steps] == [
        "Rotate",
        "RandomRotate90",
        "RandomBrightnessContrast",
        "GaussNoise",
        "OneOf",
    ]
    assert [step.p for step in steps] == [0.5] * 5
    rotate, _, contrast, noise, one_of = steps
    assert tuple(rotate.limit) == (-30, 30) and rotate.border_mode == 4  # cv2.BORDER_REFLECT_101
    assert tuple(contrast.brightness_limit) == (-0.2, 0.2) and tuple(contrast.contrast_limit) == (-0.2, 0.2)
    assert noise.std_range == pytest.approx((np.sqrt(10) / 255, np.sqrt(50) / 255))
    blur, jitter, gaussian = one_of.transforms
    assert isinstance(blur, A.Blur) and tuple(blur.blur_limit) == (3, 3)
    assert isinstance(jitter, A.ColorJitter) and tuple(jitter.hue) == (-0.2, 0.2)
    assert np.allclose(one_of.transforms_ps, 1 / 3)  # one of three, equally likely
    # GaussianBlur of 1.3.1: kernels 3, 5, 7 (chances 1/5, 2/5, 2/5) with OpenCV's sigma of each size.
    kernels = [(tuple(step.blur_limit), tuple(step.sigma_limit)) for step in gaussian.transforms]
    assert kernels == [((3, 3), (0.8, 0.8)), ((5, 5), (1.1, 1.1)), ((7, 7), (1.4, 1.4))]
    assert np.allclose(gaussian.transforms_ps, [0.2, 0.4, 0.4])


def test_the_pipeline_sees_bgr_and_its_output_is_turned_back() -> None:
    seen = []

    def identity(image, mask):
        seen.append(image.copy())
        return {"image": image, "mask": mask}

    augmentation = OfficialAugmentation(seed=0)
    augmentation.pipeline = identity
    augmentation.pipeline.set_random_seed = lambda seed: None  # reseed() seeds it; no transforms below
    images = torch.rand(2, 3, 16, 16)
    images[:, 0], images[:, 2] = 1.0, 0.0  # red
    out, _ = augmentation(images, torch.zeros(2, 16, 16), epoch=0, batch_index=0)
    assert (seen[0][..., 0] == 0).all() and (seen[0][..., 2] == 255).all()  # channel 0 is blue: BGR
    torch.testing.assert_close(out, (images * 255).round() / 255)


def test_same_seed_same_batch_other_seed_or_batch_other_draws() -> None:
    images, masks = _square_batch()
    first = OfficialAugmentation(seed=333)(images, masks, epoch=2, batch_index=5)
    again = OfficialAugmentation(seed=333)(images, masks, epoch=2, batch_index=5)
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1], again[1], rtol=0, atol=0)
    for other in (
        OfficialAugmentation(seed=334)(images, masks, epoch=2, batch_index=5),
        OfficialAugmentation(seed=333)(images, masks, epoch=3, batch_index=5),
        OfficialAugmentation(seed=333)(images, masks, epoch=2, batch_index=6),
    ):
        assert not torch.equal(other[0], first[0])


def test_every_transform_gets_a_seed_of_its_own() -> None:
    """albumentations seeds every step of a composition alike, which would tie their p = 0.5 draws."""
    from albumentations.core.composition import BaseCompose

    augmentation = OfficialAugmentation(seed=333)
    augmentation(*_square_batch(count=1), epoch=0, batch_index=0)
    nodes, stack = [], [augmentation.pipeline]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.transforms if isinstance(node, BaseCompose) else [])
    assert len(nodes) == 12 and len({node.seed for node in nodes}) == len(nodes)


def test_masks_move_with_their_images() -> None:
    images, masks = _square_batch(count=8)
    moved = 0
    for seed in range(6):
        out, out_masks = OfficialAugmentation(seed=seed)(images, masks, epoch=0, batch_index=0)
        assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
        for image, mask, original in zip(out, out_masks, masks, strict=True):
            square = image.mean(dim=0) > 0.5
            union = (square | (mask > 0)).sum()
            overlap = (square & (mask > 0)).sum() / union
            assert overlap > 0.85, f"seed {seed}: the mask left its square (IoU {float(overlap):.2f})"
            moved += int(not torch.equal(mask, original))
    assert moved > 10  # rotations did happen (about 3 of 4 images are turned)
