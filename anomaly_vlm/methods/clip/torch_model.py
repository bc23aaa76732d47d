"""Two-prompt CLIP baseline ("CLIP" rows of the zero-shot anomaly literature).

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021 (zero-shot protocol as used in WinCLIP, CVPR 2023, Table 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph


class CLIPBaseline(nn.Module):
    """Image score: softmax(100 * cos(image, [normal, anomalous]))[anomalous]; the same on every
    final patch token projected by the visual projection gives the pixel map, upsampled bilinearly.

    Args:
        backbone: frozen CLIP.
        logit_scale: temperature of the two-way softmax (CLIP's 100).
    """

    def __init__(self, backbone: FrozenCLIP, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.logit_scale = logit_scale
        self.register_buffer("text_classifier", torch.zeros(2, backbone.embed_dim), persistent=False)

    def set_text_classifier(self, classifier: Tensor) -> None:
        """``[2, D]`` unit-norm rows (normal, anomalous)."""
        self.text_classifier = classifier.to(self.text_classifier)

    cacheable = True

    def feature_spec(self) -> dict[str, Any]:
        return {"method": "clip", "features": ["global_embedding", "patch_embeddings"]}

    @torch.no_grad()
    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """``global_embedding [B, D]`` (projected CLS) and ``patch_embeddings [B, N, D]`` (projected
        final patch tokens), neither normalised. ``normalized``: the images are already normalised."""
        features = self.backbone.encode_image(images, normalized=normalized)
        return {
            "global_embedding": features.global_embedding,
            "patch_embeddings": self.backbone.project(features.patch_tokens),
        }

    def score(self, features: FrozenFeatures) -> Prediction:
        image_embedding = F.normalize(features["global_embedding"], dim=-1)
        image_scores = (self.logit_scale * image_embedding @ self.text_classifier.T).softmax(-1)[:, 1]
        patches = F.normalize(features["patch_embeddings"], dim=-1)
        patch_scores = (self.logit_scale * patches @ self.text_classifier.T).softmax(-1)[..., 1]
        side_h, side_w = self.backbone.grid_size
        grid = patch_scores.reshape(-1, 1, side_h, side_w)
        size = (self.backbone.image_size, self.backbone.image_size)
        maps = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
        return Prediction(image_scores, maps)

    def forward(self, images: Tensor) -> Prediction:
        return self.score(self.frozen_features(images))

    def export_module(self) -> ScoringGraph:
        """The export graph: normalised images -> (image score, map), the text classifier baked in."""
        return ScoringGraph(self)
