"""Lightning callbacks: the evaluation path (category scoring and metrics), efficiency probe."""

from anomaly_vlm.callbacks.efficiency import EfficiencyProbe
from anomaly_vlm.callbacks.evaluation import CategoryEvaluation
from anomaly_vlm.callbacks.scoring import CategoryResult, CategoryScoring

__all__ = ["CategoryEvaluation", "CategoryResult", "CategoryScoring", "EfficiencyProbe"]
