from anomaly_vlm.methods.winclip.lightning_module import WinCLIPModule
from anomaly_vlm.methods.winclip.torch_model import WinCLIPModel

__all__ = ["WinCLIPModel", "WinCLIPModule"]
