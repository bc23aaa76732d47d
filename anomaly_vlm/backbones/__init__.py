"""Frozen backbones shared by all methods: CLIP (image and text towers) and DINOv2 (vision only)."""

from anomaly_vlm.backbones.capabilities import BackboneCapabilities, BackboneNeeds, backbone_problem
from anomaly_vlm.backbones.clip import FrozenCLIP, ImageFeatures, interpolate_positional_embedding
from anomaly_vlm.backbones.dinov2 import FrozenDINOv2
from anomaly_vlm.backbones.weights import WeightsNotFoundError, resolve_weights

__all__ = [
    "BackboneCapabilities",
    "BackboneNeeds",
    "FrozenDINOv2",
    "backbone_problem",
    "FrozenCLIP",
    "ImageFeatures",
    "WeightsNotFoundError",
    "interpolate_positional_embedding",
    "resolve_weights",
]
