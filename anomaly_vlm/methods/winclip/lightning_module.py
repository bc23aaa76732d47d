"""Lightning wrapper of WinCLIP / WinCLIP+ (``method=winclip``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.methods.winclip.torch_model import WinCLIPModel
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.prompts.text_cache import Aggregation


class WinCLIPModule(AnomalyMethod):
    """WinCLIP (``shots=0``) and WinCLIP+ (``shots=k`` normal reference images per category).

    Paper: Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023.

    Args:
        backbone: frozen CLIP ViT (paper: ViT-B-16-plus-240, laion400m_e31, 240 px).
        prompts: prompt set (paper: ``winclip_cpe``, the compositional prompt ensemble).
        shots: normal reference images per category.
        scales: window sizes in patches (paper: 2 and 3).
        temperature: class-score softmax temperature (0.07).
        text_aggregation: how sentence embeddings become a state vector; ``raw_mean`` averages the
            un-normalised embeddings, as the peer implementation (anomalib) does.
        window_batch_size: windows per transformer call (memory bound only).
        cls_only_last_block: exact shortcut in the last block of window passes (see the torch model).
        text_cache_dir: disk cache of text embeddings.
    """

    method_name = "winclip"
    supports_few_shot = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        scales: Sequence[int] = (2, 3),
        temperature: float = 0.07,
        text_aggregation: Aggregation = "raw_mean",
        window_batch_size: int = 1024,
        cls_only_last_block: bool = True,
        text_cache_dir: str | None = None,
    ) -> None:
        model = WinCLIPModel(
            backbone,
            scales=scales,
            temperature=temperature,
            window_batch_size=window_batch_size,
            cls_only_last_block=cls_only_last_block,
        )
        super().__init__(model, prompts, shots, text_cache_dir)
        self.text_aggregation = text_aggregation

    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        classifier = self.text_cache.classifier(self.backbone, self.prompts, category, self.text_aggregation)
        self.model.set_text_classifier(classifier)
        if self.shots and (reference_images is None or reference_images.shape[0] == 0):
            raise ValueError(
                f"shots={self.shots} but no reference images were given for category '{category}'"
            )
        features = self.reference_features(reference_images) if self.shots else None
        self.model.set_reference_features(features)
