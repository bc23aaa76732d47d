from anomaly_vlm.methods.clip.lightning_module import CLIPBaselineModule
from anomaly_vlm.methods.clip.torch_model import CLIPBaseline

__all__ = ["CLIPBaseline", "CLIPBaselineModule"]
