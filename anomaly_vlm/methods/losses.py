"""Segmentation losses shared by the trained methods (APRIL-GAN, AnomalyCLIP).

Both reference implementations use the same two modules (APRIL-GAN's ``loss.py``, reused verbatim by
AnomalyCLIP): a focal loss with label smoothing on per-pixel softmax outputs, and a per-image soft
dice loss. The functions below reproduce their arithmetic, smoothing constants included.
"""

from __future__ import annotations

import torch
from torch import Tensor


def focal_loss(probabilities: Tensor, target: Tensor, gamma: float = 2.0, eps: float = 1e-5) -> Tensor:
    """Multi-class focal loss on per-pixel class probabilities (Lin et al., ICCV 2017).

    As in the reference code (no class weights): the one-hot target is smoothed into
    ``[eps / (C - 1), 1 - eps]``, ``p_t = sum_c onehot_c * p_c + eps`` (which also keeps the log finite),
    and the loss is ``-(1 - p_t)^gamma * log(p_t)`` averaged over all pixels of the batch.

    Args:
        probabilities: ``[B, C, H, W]`` softmax output (already normalised over C).
        target: ``[B, H, W]`` integer class per pixel (for anomaly maps: 0 normal, 1 anomalous); a
            binary float mask is accepted.
        gamma: focusing parameter.
        eps: the reference code's ``smooth`` (label smoothing and log guard); 0 disables both.
    Returns:
        Scalar mean loss.
    """
    num_classes = probabilities.shape[1]
    one_hot = torch.zeros_like(probabilities).scatter_(1, target.long().unsqueeze(1), 1.0)
    if eps:
        one_hot = one_hot.clamp(eps / max(num_classes - 1, 1), 1.0 - eps)
    p_t = (one_hot * probabilities).sum(dim=1) + eps
    return (-((1.0 - p_t) ** gamma) * torch.log(p_t)).mean()


def dice_loss(prediction: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss, per image ``1 - (2 |P∩G| + s) / (|P| + |G| + s)``, averaged over the batch.

    Matches the reference ``BinaryDiceLoss`` (``smooth = 1``, dice per image, ``1 - mean``).

    Args:
        prediction: ``[B, H, W]`` probabilities of the class.
        target: ``[B, H, W]`` binary ground truth of the class.
    """
    prediction = prediction.reshape(prediction.shape[0], -1)
    target = target.reshape(target.shape[0], -1).to(prediction.dtype)
    intersection = (prediction * target).sum(dim=1)
    dice = (2.0 * intersection + smooth) / (prediction.sum(dim=1) + target.sum(dim=1) + smooth)
    return (1.0 - dice).mean()
