"""Lightning wrapper of the two-prompt CLIP baseline (``method=clip``)."""

from __future__ import annotations

from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.methods.clip.torch_model import CLIPBaseline
from anomaly_vlm.prompts import PromptSet


class CLIPBaselineModule(AnomalyMethod):
    """Zero-shot CLIP with one normal and one anomalous prompt per class.

    Paper: Radford et al., ICML 2021; the "CLIP" baseline of WinCLIP (Jeong et al., CVPR 2023).
    """

    method_name = "clip"
    supports_few_shot = False

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        logit_scale: float = 100.0,
        text_cache_dir: str | None = None,
    ) -> None:
        super().__init__(CLIPBaseline(backbone, logit_scale), prompts, shots, text_cache_dir)

    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        classifier = self.text_cache.classifier(self.backbone, self.prompts, category, "normalized_mean")
        self.model.set_text_classifier(classifier)
