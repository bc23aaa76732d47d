"""Deploying a detector: save a scored category's state, load it anywhere, score new images."""

from anomaly_vlm.deploy.detector import DETECTOR_FORMAT, Detector, DetectorError, DetectorOutput

__all__ = ["DETECTOR_FORMAT", "Detector", "DetectorError", "DetectorOutput"]
