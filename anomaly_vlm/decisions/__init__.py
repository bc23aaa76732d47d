"""From scores to decisions: per-category thresholds and the metrics of the binary decisions."""

from anomaly_vlm.decisions.thresholds import (
    THRESHOLD_METHODS,
    CategoryThresholds,
    ThresholdError,
    ThresholdSettings,
    decision_metrics,
    f1_threshold,
    mask_metrics,
    normal_fpr_threshold,
)

__all__ = [
    "THRESHOLD_METHODS",
    "CategoryThresholds",
    "ThresholdError",
    "ThresholdSettings",
    "decision_metrics",
    "f1_threshold",
    "mask_metrics",
    "normal_fpr_threshold",
]
