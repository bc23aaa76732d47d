"""Frozen CLIP backbones shared by all methods."""

from anomaly_vlm.backbones.clip import FrozenCLIP, ImageFeatures, interpolate_positional_embedding
from anomaly_vlm.backbones.weights import WeightsNotFoundError, resolve_weights

__all__ = [
    "FrozenCLIP",
    "ImageFeatures",
    "WeightsNotFoundError",
    "interpolate_positional_embedding",
    "resolve_weights",
]
