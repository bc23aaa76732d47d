"""anomaly-vlm: vision-language (CLIP) anomaly classification and segmentation experiments."""

__version__ = "0.1.0"
