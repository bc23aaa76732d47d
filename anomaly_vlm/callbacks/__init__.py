"""Lightning callbacks: evaluation feed, efficiency probe."""

from anomaly_vlm.callbacks.efficiency import EfficiencyProbe
from anomaly_vlm.callbacks.evaluation import EvaluationCallback

__all__ = ["EfficiencyProbe", "EvaluationCallback"]
