from anomaly_vlm.methods.adaclip.lightning_module import AdaCLIPModule
from anomaly_vlm.methods.adaclip.torch_model import AdaCLIP

__all__ = ["AdaCLIP", "AdaCLIPModule"]
