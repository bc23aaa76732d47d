"""AnomalyCLIP: object-agnostic learnable prompts, DPAM, glocal loss (pure torch).

Paper: Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
ICLR 2024. Where the paper and the official code (zqhang/AnomalyCLIP) differ, this follows the code,
which produced the published numbers; each such point is stated where it is implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP, value_value_attention
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.methods.ops import default_dpam_start, encode_dpam, gaussian_blur
from anomaly_vlm.prompts.learnable import LearnablePromptEncoder, LearnablePromptSet


@dataclass
class AnomalyCLIPFeatures:
    """Image-side outputs.

    Attributes:
        global_embedding: ``[B, D]`` projected CLS of the ORIGINAL stream (not normalised).
        patch_embeddings: block (1-based) -> ``[B, N, D]`` projected patch tokens of the DPAM stream
            (the plain stream for blocks before DPAM starts or with DPAM off), not normalised.
    """

    global_embedding: Tensor
    patch_embeddings: dict[int, Tensor]

    def as_dict(self) -> FrozenFeatures:
        """The contract's flat form: ``global_embedding`` and ``patch_embeddings_<block>``."""
        out = {"global_embedding": self.global_embedding}
        for index, tokens in self.patch_embeddings.items():
            out[f"patch_embeddings_{index}"] = tokens
        return out

    @classmethod
    def from_dict(cls, features: FrozenFeatures, layers: Sequence[int]) -> AnomalyCLIPFeatures:
        patches = {index: features[f"patch_embeddings_{index}"] for index in layers}
        return cls(global_embedding=features["global_embedding"], patch_embeddings=patches)


class AnomalyCLIP(nn.Module):
    """Frozen CLIP + DPAM image encoder + learnable object-agnostic prompts.

    Args:
        backbone: frozen CLIP (the published setting: ViT-L-14-336 QuickGELU, OpenAI weights, 518 px,
            positional embedding interpolated bilinearly).
        prompts: the learnable prompt set (shapes of context and deep prompt tokens).
        layers: blocks (1-based) whose DPAM-stream patch tokens make anomaly maps. The published numbers
            use ``[24]`` only (``--features_list 24``).
        dpam: use the DPAM stream for patch tokens; False gives plain CLIP patch tokens.
        dpam_start: first DPAM block (1-based); None scales the official 6-of-24 to the backbone depth
            (:func:`default_dpam_start`).
        temperature: cosine similarities are divided by it before every softmax (0.07).
        local_loss_weight: weight of the local (segmentation) loss, the official ``lam = 4``.
        global_ln_post: apply ``ln_post`` to the CLS token before the projection. The official code
            does not (``x_ori[0] @ proj``; the learned prompts are fitted to that embedding), so the
            default is False; the paper does not mention it.
        blur_sigma, blur_truncate: Gaussian blur of the test maps (SciPy's ``gaussian_filter`` with
            ``sigma=4`` and its default truncation 4 in the official test script); 0 disables.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: LearnablePromptSet,
        layers: Sequence[int] = (24,),
        dpam: bool = True,
        dpam_start: int | None = None,
        temperature: float = 0.07,
        local_loss_weight: float = 4.0,
        global_ln_post: bool = False,
        blur_sigma: float = 4.0,
        blur_truncate: float = 4.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if not layers:
            raise ValueError("method.layers is empty; AnomalyCLIP needs at least one block (e.g. [24])")
        try:
            self.layers = backbone.check_layers(layers)
        except ValueError as error:
            raise ValueError(f"method.layers: {error}") from None
        num_layers = backbone.num_layers
        start = default_dpam_start(num_layers) if dpam_start is None else int(dpam_start)
        if not 1 <= start <= num_layers:
            raise ValueError(
                f"method.dpam_start={dpam_start} outside 1..{num_layers} of '{backbone.model_name}'"
            )
        self.dpam = bool(dpam)
        self.dpam_start = start
        if temperature <= 0:
            raise ValueError(f"method.temperature={temperature} must be positive")
        self.temperature = float(temperature)
        self.local_loss_weight = float(local_loss_weight)
        self.global_ln_post = bool(global_ln_post)
        self.blur_sigma = float(blur_sigma)
        self.blur_truncate = float(blur_truncate)
        self.prompt_encoder = LearnablePromptEncoder(backbone, prompts)
        #: Text features fixed for scoring (set per category); None computes them from the prompts.
        self.scoring_text: Tensor | None = None

    # ----- frozen features (the image side: DPAM involves no learned parameter) --------------------
    cacheable = True

    def feature_spec(self) -> dict[str, Any]:
        return {
            "method": "anomalyclip",
            "layers": list(self.layers),
            "dpam": self.dpam,
            "dpam_start": self.dpam_start,
            "global_ln_post": self.global_ln_post,
        }

    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """:meth:`encode_image` as a flat dict (see :meth:`AnomalyCLIPFeatures.as_dict`)."""
        return self.encode_image(images, normalized=normalized).as_dict()

    # ----- image side ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: Tensor, normalized: bool = False) -> AnomalyCLIPFeatures:
        """Run the original stream and, from ``dpam_start`` on, the DPAM stream beside it.

        DPAM (as ``DAPM_replace`` + ``AnomalyCLIP_forward`` of the official code): the DPAM stream starts
        as the original stream's input to block ``s = dpam_start`` (``h_{s-1}``) and, for each block
        ``l >= s``, adds ``VV_l(ln_1(x_l))`` where ``x_l`` is the ORIGINAL stream's input to block ``l``;
        it has no MLP. The original stream runs the unmodified blocks. Patch features of block ``l`` =
        DPAM stream after block ``l`` -> ``ln_post`` -> ``proj``. Global feature = original stream's CLS
        after the last block ``@ proj`` (see ``global_ln_post``).
        """
        global_embedding, patches = encode_dpam(
            self.backbone,
            images,
            self.layers,
            dpam=self.dpam,
            dpam_start=self.dpam_start,
            global_ln_post=self.global_ln_post,
            normalized=normalized,
        )
        return AnomalyCLIPFeatures(global_embedding=global_embedding, patch_embeddings=patches)

    # ----- text side ----------------------------------------------------------------------------
    def text_features(self) -> Tensor:
        """``[2, D]`` unit-norm text features (normal, anomalous) from the learnable prompts."""
        return self.prompt_encoder()

    # ----- scoring --------------------------------------------------------------------------------
    def image_logits(self, features: AnomalyCLIPFeatures, text: Tensor) -> Tensor:
        """``[B, 2]`` cos(image, text) / temperature."""
        return F.normalize(features.global_embedding, dim=-1) @ text.T / self.temperature

    def patch_probabilities(
        self, features: AnomalyCLIPFeatures, text: Tensor, size: tuple[int, int]
    ) -> dict[int, Tensor]:
        """Per used block ``[B, 2, H, W]`` class probabilities at ``size = (H, W)``.

        Softmax over (normal, anomalous) of cos/temperature on the patch grid, THEN bilinear upsampling
        (``align_corners=False``) to ``size``, as ``compute_similarity`` + ``get_similarity_map`` of the
        official code.
        """
        side_h, side_w = self.backbone.grid_size
        maps = {}
        for index in self.layers:
            patches = F.normalize(features.patch_embeddings[index], dim=-1)
            probs = (patches @ text.T / self.temperature).softmax(dim=-1)
            grid = probs.transpose(1, 2).reshape(probs.shape[0], 2, side_h, side_w)
            maps[index] = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)
        return maps

    def loss(self, images: Tensor, masks: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Glocal loss: CE(image logits, label) + local_loss_weight x Σ_layers (focal + 2 dice).

        ``masks`` are ``[B, H, W]`` binary at the input size, ``labels`` ``[B]`` 0/1. The official code
        sums the local terms over the used layers and multiplies the sum by 4.
        """
        return self.loss_from_features(self.encode_image(images), masks, labels)

    def loss_from_features(
        self, features: AnomalyCLIPFeatures, masks: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        """:meth:`loss` on image features computed beforehand (the image side is frozen)."""
        text = self.text_features()
        global_loss = F.cross_entropy(self.image_logits(features, text), labels.long())
        target = (masks > 0.5).to(text.dtype)
        local = text.new_zeros(())
        for probs in self.patch_probabilities(features, text, masks.shape[-2:]).values():
            local = local + focal_loss(probs, target)
            local = local + dice_loss(probs[:, 1], target)
            local = local + dice_loss(probs[:, 0], 1.0 - target)
        total = global_loss + self.local_loss_weight * local
        return {"loss": total, "global_loss": global_loss, "local_loss": local}

    @torch.no_grad()
    def score(self, features: FrozenFeatures) -> Prediction:
        """Image score = softmax(cos(global, text)/T)[anomalous]. Map = anomalous probability summed
        over the used layers, then the Gaussian blur. (The official map ``(p_anomalous + 1 -
        p_normal) / 2`` equals ``p_anomalous`` for a two-way softmax.)"""
        text = self.text_features() if self.scoring_text is None else self.scoring_text
        return self.score_with_text(features, text)

    def score_with_text(self, features: FrozenFeatures, text: Tensor) -> Prediction:
        """:meth:`score` with the given ``[2, D]`` unit text features."""
        parts = AnomalyCLIPFeatures.from_dict(features, self.layers)
        scores = self.image_logits(parts, text).softmax(dim=-1)[:, 1]
        size = (self.backbone.image_size, self.backbone.image_size)
        probabilities = self.patch_probabilities(parts, text, size)
        maps = sum(probs[:, 1] for probs in probabilities.values())
        return Prediction(scores, gaussian_blur(maps, self.blur_sigma, self.blur_truncate))

    def forward(self, images: Tensor) -> Prediction:
        return self.score(self.frozen_features(images))

    def export_module(self) -> AnomalyCLIPGraph:
        """The export graph: normalised images -> (image score, map), with the two text features
        computed once from the learned prompts and baked in (the text encoder is not part of it)."""
        with torch.no_grad():
            text = self.text_features() if self.scoring_text is None else self.scoring_text
        return AnomalyCLIPGraph(self, text.detach().clone())

    @torch.no_grad()
    def predict(self, images: Tensor, text: Tensor | None = None) -> Prediction:
        """:meth:`forward` with the given text features (None: from the prompts; see :meth:`score`)."""
        previous, self.scoring_text = self.scoring_text, text
        try:
            return self(images)
        finally:
            self.scoring_text = previous

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, dpam={self.dpam}, dpam_start={self.dpam_start}, "
            f"temperature={self.temperature}, blur_sigma={self.blur_sigma}"
        )


class AnomalyCLIPGraph(ScoringGraph):
    """:class:`ScoringGraph` of AnomalyCLIP with fixed text features (a buffer of the graph)."""

    def __init__(self, model: AnomalyCLIP, text: Tensor) -> None:
        super().__init__(model)
        self.register_buffer("text", text)

    def score(self, features: FrozenFeatures) -> Prediction:
        return self.model.score_with_text(features, self.text)


__all__ = [
    "AnomalyCLIP",
    "AnomalyCLIPGraph",
    "AnomalyCLIPFeatures",
    "default_dpam_start",
    "value_value_attention",
]
