"""The shared segmentation losses against a direct transcription of the reference formulas."""

from __future__ import annotations

import torch

from anomaly_vlm.methods.losses import dice_loss, focal_loss


def _reference_focal(probabilities, target, gamma=2.0, smooth=1e-5):
    # Per pixel, written out: smoothed one-hot, p_t = <onehot, p> + smooth, -(1 - p_t)^gamma log p_t.
    flat = probabilities.permute(0, 2, 3, 1).reshape(-1, probabilities.shape[1])
    labels = target.reshape(-1).long()
    values = []
    for row, label in zip(flat, labels, strict=True):
        one_hot = torch.full_like(row, smooth / (len(row) - 1))
        one_hot[label] = 1 - smooth
        p_t = (one_hot * row).sum() + smooth
        values.append(-((1 - p_t) ** gamma) * torch.log(p_t))
    return torch.stack(values).mean()


def test_focal_loss_matches_the_reference_formula_with_its_smoothing():
    torch.manual_seed(0)
    probabilities = torch.randn(2, 2, 5, 4).softmax(dim=1)
    target = (torch.rand(2, 5, 4) > 0.7).float()
    torch.testing.assert_close(focal_loss(probabilities, target), _reference_focal(probabilities, target))
    # A confidently right pixel costs (almost) nothing; a confidently wrong one stays finite.
    right = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert focal_loss(right, torch.zeros(1, 1, 1)) < 1e-9
    assert torch.isfinite(focal_loss(right, torch.ones(1, 1, 1)))


def test_dice_loss_is_per_image_with_unit_smoothing():
    prediction = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # image 1: (2*1 + 1) / (1 + 1 + 1) = 1; image 2: (0 + 1) / (1 + 0 + 1) = 0.5.
    torch.testing.assert_close(dice_loss(prediction, target), torch.tensor(0.25))
