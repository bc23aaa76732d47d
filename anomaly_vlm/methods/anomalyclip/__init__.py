from anomaly_vlm.methods.anomalyclip.lightning_module import AnomalyCLIPModule
from anomaly_vlm.methods.anomalyclip.torch_model import AnomalyCLIP

__all__ = ["AnomalyCLIP", "AnomalyCLIPModule"]
