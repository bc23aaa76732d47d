from anomaly_vlm.methods.faprompt.lightning_module import FAPromptModule
from anomaly_vlm.methods.faprompt.torch_model import FAPrompt

__all__ = ["FAPrompt", "FAPromptModule"]
