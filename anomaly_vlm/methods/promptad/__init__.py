"""PromptAD (``method=promptad``): prompts learned per category from the k normal shots."""

from anomaly_vlm.methods.promptad.lightning_module import PromptADModule
from anomaly_vlm.methods.promptad.torch_model import PromptADModel, PromptLearner

__all__ = ["PromptADModel", "PromptADModule", "PromptLearner"]
