"""Exact anomaly-detection metrics and the per-category evaluator."""

from anomaly_vlm.metrics.evaluator import AUPRO_VARIANTS, METRIC_NAMES, Evaluator
from anomaly_vlm.metrics.functional import (
    ScoreSplit,
    aupro,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    official_aupro,
    pixel_metrics,
    ranking_metrics,
    region_sizes,
    to_numpy,
)

__all__ = [
    "AUPRO_VARIANTS",
    "METRIC_NAMES",
    "Evaluator",
    "ScoreSplit",
    "aupro",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "official_aupro",
    "pixel_metrics",
    "ranking_metrics",
    "region_sizes",
    "to_numpy",
]
