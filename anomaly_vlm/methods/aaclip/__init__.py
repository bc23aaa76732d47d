from anomaly_vlm.methods.aaclip.lightning_module import AAClipModule
from anomaly_vlm.methods.aaclip.torch_model import AAClip

__all__ = ["AAClip", "AAClipModule"]
