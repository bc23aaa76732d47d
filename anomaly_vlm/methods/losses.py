"""Segmentation losses shared by the trained methods (APRIL-GAN, AnomalyCLIP)."""

from __future__ import annotations

import torch
from torch import Tensor


def focal_loss(probabilities: Tensor, target: Tensor, gamma: float = 2.0, eps: float = 1e-6) -> Tensor:
    """Multi-class focal loss on per-pixel class probabilities (Lin et al., ICCV 2017).

    Args:
        probabilities: ``[B, C, H, W]`` softmax output (already normalised over C).
        target: ``[B, H, W]`` integer class per pixel (for anomaly maps: 0 normal, 1 anomalous).
        gamma: focusing parameter.
    Returns:
        Mean over pixels of ``-(1 - p_t)^gamma * log(p_t)``.
    """
    target = target.long().unsqueeze(1)
    p_t = probabilities.gather(1, target).clamp(min=eps, max=1.0)
    return (-((1.0 - p_t) ** gamma) * torch.log(p_t)).mean()


def dice_loss(prediction: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss ``1 - (2 |P∩G| + s) / (|P| + |G| + s)`` over the whole batch.

    Args:
        prediction: ``[B, H, W]`` probabilities of the class.
        target: ``[B, H, W]`` binary ground truth of the class.
    """
    prediction = prediction.reshape(prediction.shape[0], -1)
    target = target.reshape(target.shape[0], -1).to(prediction.dtype)
    intersection = (prediction * target).sum(dim=1)
    dice = (2.0 * intersection + smooth) / (prediction.sum(dim=1) + target.sum(dim=1) + smooth)
    return (1.0 - dice).mean()
