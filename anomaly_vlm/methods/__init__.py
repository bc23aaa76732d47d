"""Methods: one folder each, a pure torch model plus a thin Lightning wrapper."""

from anomaly_vlm.methods.base import AnomalyMethod

__all__ = ["AnomalyMethod"]
