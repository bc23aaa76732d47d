from anomaly_vlm.methods.anomalydino.lightning_module import AnomalyDINOModule
from anomaly_vlm.methods.anomalydino.torch_model import (
    AnomalyDINO,
    AnomalyDINOError,
    background_mask,
    mean_top_percent,
    nearest_distances,
    preprocess_table,
    rotate_references,
)

__all__ = [
    "AnomalyDINO",
    "AnomalyDINOError",
    "AnomalyDINOModule",
    "background_mask",
    "mean_top_percent",
    "nearest_distances",
    "preprocess_table",
    "rotate_references",
]
