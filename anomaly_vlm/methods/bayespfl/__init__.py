from anomaly_vlm.methods.bayespfl.lightning_module import BayesPFLModule
from anomaly_vlm.methods.bayespfl.torch_model import BayesPFL

__all__ = ["BayesPFL", "BayesPFLModule"]
