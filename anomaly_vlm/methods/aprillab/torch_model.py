"""APRIL-GAN: multi-stage linear projections of CLIP patch tokens into the text space, plus a
few-shot memory bank of raw patch tokens.

Paper: Chen et al., "APRIL-GAN: A Zero-/Few-Shot Anomaly Classification and Segmentation Method for
CVPR 2023 VAND Workshop Challenge Tracks 1&2", arXiv 2305.17382 (the "AprilLab framework").

Where the paper is silent the released code (VAND-APRIL-GAN) decides:

* tokens are the raw residual stream at the output of the chosen blocks (no ``ln_post``, no ``proj``),
  CLS dropped, each stage with its own ``Linear(width -> embed_dim)`` (bias on);
* per stage, ``100 * normalised tokens @ T`` is reshaped to ``[B, 2, g, g]``, upsampled bilinearly with
  ``align_corners=True`` and only then soft-maxed over the two classes; the test map is the SUM of the
  stages' abnormal channels (not the mean), without any blur;
* the image score uses the un-projected global embedding ``ln_post(CLS) @ proj``;
* few-shot maps compare RAW (un-projected, un-normalised by ``ln_post``) tokens of the query with those
  of the reference images, ``min(1 - cos)`` per stage, upsampled like the text maps and summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.ops import resolve_stages
from anomaly_vlm.methods.projections import TapProjections


class AprilGAN(nn.Module):
    """Frozen CLIP + one trainable linear projection per stage + optional few-shot memory.

    Paper: Chen et al., arXiv 2305.17382 (APRIL-GAN); arithmetic as in the VAND-APRIL-GAN release.

    Args:
        backbone: frozen CLIP.
        stages: 1-based blocks whose outputs are projected (None: the published 6/12/18/24 scaled to
            the backbone depth).
        few_shot_stages: blocks whose raw tokens feed the few-shot memory (None: same as ``stages``,
            as in the published runs).
        logit_scale: the fixed 100 of CLIP's zero-shot classifier.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        stages: Sequence[int] | None = None,
        few_shot_stages: Sequence[int] | None = None,
        logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.stages = resolve_stages(stages, backbone)
        self.few_shot_stages = (
            self.stages
            if few_shot_stages is None
            else resolve_stages(few_shot_stages, backbone, key="method.few_shot_stages")
        )
        self.logit_scale = float(logit_scale)
        self.projections = TapProjections(backbone.width, backbone.embed_dim, len(self.stages))
        self.register_buffer("text_classifier", torch.zeros(2, backbone.embed_dim), persistent=False)
        self.memory: list[Tensor] = []

    # ----- state ------------------------------------------------------------------------------
    def set_text_classifier(self, classifier: Tensor) -> None:
        """``[2, D]`` unit rows (normal, abnormal) of the current category."""
        if classifier.shape != (2, self.backbone.embed_dim):
            raise ValueError(
                f"text classifier must be [2, {self.backbone.embed_dim}], got {tuple(classifier.shape)}"
            )
        self.text_classifier = classifier.to(self.text_classifier)

    @torch.no_grad()
    def build_memory(self, reference_images: Tensor | None, batch_size: int = 8) -> None:
        """Store the raw patch tokens of the reference images, one ``[k * N, W]`` bank per stage."""
        if reference_images is None or len(reference_images) == 0:
            self.memory = []
            return
        chunks = [
            self.frozen_features(reference_images[start : start + batch_size])
            for start in range(0, len(reference_images), batch_size)
        ]
        self.set_memory_features({key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]})

    @torch.no_grad()
    def set_memory_features(self, features: FrozenFeatures | None) -> None:
        """The few-shot memory from the :meth:`frozen_features` of the reference images (None: none)."""
        if features is None or len(features["global_embedding"]) == 0:
            self.memory = []
            return
        self.memory = [
            features[_block_key(stage)][:, 1:].reshape(-1, self.backbone.width)
            for stage in self.few_shot_stages
        ]

    @property
    def has_memory(self) -> bool:
        return bool(self.memory)

    # ----- frozen features --------------------------------------------------------------------
    cacheable = True

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Blocks whose raw tokens the projections and the few-shot memory read."""
        return tuple(sorted(set(self.stages) | set(self.few_shot_stages)))

    def feature_spec(self) -> dict[str, Any]:
        return {"method": "aprillab", "layers": list(self.feature_layers)}

    @torch.no_grad()
    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """``global_embedding [B, D]`` (``ln_post(CLS) @ proj``) and ``block_<n> [B, 1 + N, W]``, the
        raw residual stream after block ``n`` for every block in :attr:`feature_layers`.
        ``normalized``: the images are already normalised."""
        features = self.backbone.encode_image(images, layers=self.feature_layers, normalized=normalized)
        out = {"global_embedding": features.global_embedding}
        for layer, tokens in features.layer_tokens.items():
            out[_block_key(layer)] = tokens
        return out

    def layer_tokens(self, features: FrozenFeatures) -> dict[int, Tensor]:
        """Block -> ``[B, 1 + N, W]`` raw tokens, from :meth:`frozen_features`."""
        return {layer: features[_block_key(layer)] for layer in self.feature_layers}

    # ----- computation ------------------------------------------------------------------------
    def _upsample(self, grid_values: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(grid_values, size=size, mode="bilinear", align_corners=True)

    def stage_probabilities(
        self, layer_tokens: dict[int, Tensor], text: Tensor, size: tuple[int, int]
    ) -> list[Tensor]:
        """Per stage ``[B, 2, H, W]`` class probabilities at the input size.

        Args:
            layer_tokens: raw block outputs from :meth:`layer_tokens`.
            text: ``[2, D]`` (one category) or ``[B, 2, D]`` (a class per image, as in training).
            size: output (input image) size.
        """
        side_h, side_w = self.backbone.grid_size
        outputs = []
        for projection, stage in zip(self.projections, self.stages, strict=True):
            tokens = F.normalize(projection(layer_tokens[stage][:, 1:]), dim=-1)
            if text.dim() == 2:
                logits = self.logit_scale * tokens @ text.T
            else:
                logits = self.logit_scale * torch.einsum("bnd,bcd->bnc", tokens, text)
            grid = logits.transpose(1, 2).reshape(tokens.shape[0], 2, side_h, side_w)
            # Softmax after upsampling, as the released code does (upsampled logits, not probabilities).
            outputs.append(self._upsample(grid, size).softmax(dim=1))
        return outputs

    def image_probability(self, global_embedding: Tensor) -> Tensor:
        """``[B]`` abnormal probability of the global (CLS) embedding; the projections play no part."""
        embedding = F.normalize(global_embedding, dim=-1)
        return (self.logit_scale * embedding @ self.text_classifier.T).softmax(dim=-1)[:, 1]

    def few_shot_map(self, layer_tokens: dict[int, Tensor], size: tuple[int, int]) -> Tensor:
        """``[B, H, W]`` sum over stages of ``min_bank (1 - cos)`` of raw tokens, upsampled."""
        side_h, side_w = self.backbone.grid_size
        total = None
        for bank, stage in zip(self.memory, self.few_shot_stages, strict=True):
            query = F.normalize(layer_tokens[stage][:, 1:], dim=-1)
            distance = 1.0 - query @ F.normalize(bank, dim=-1).T  # [B, N, k * N]
            nearest = distance.min(dim=-1).values.reshape(-1, 1, side_h, side_w)
            upsampled = self._upsample(nearest, size)[:, 0]
            total = upsampled if total is None else total + upsampled
        return total

    def score(self, features: FrozenFeatures) -> Prediction:
        """Score images from their :meth:`frozen_features`.

        The map is the zero-shot map (sum of the stages' abnormal probabilities) plus, when a memory is
        set, the few-shot map. The image score is the text probability; with a memory the prediction
        also carries ``text_probability`` and ``map_max`` for :meth:`postprocess_set`.
        """
        size = (self.backbone.image_size, self.backbone.image_size)
        layer_tokens = self.layer_tokens(features)
        probabilities = self.stage_probabilities(layer_tokens, self.text_classifier, size)
        anomaly_map = torch.stack([stage[:, 1] for stage in probabilities]).sum(dim=0)
        text_probability = self.image_probability(features["global_embedding"])
        if not self.has_memory:
            return Prediction(text_probability, anomaly_map)
        anomaly_map = anomaly_map + self.few_shot_map(layer_tokens, size)
        extras = {"text_probability": text_probability, "map_max": anomaly_map.flatten(1).amax(dim=1)}
        return Prediction(text_probability, anomaly_map, extras)

    # ----- the set-level few-shot score ------------------------------------------------------------
    #: Set statistics frozen by a saved detector (None: each scored set's own, as in the reference code).
    frozen_set_statistics: dict[str, Tensor] | None = None

    @property
    def uses_set_statistics(self) -> bool:
        """Only the few-shot image score is normalised over the set."""
        return self.has_memory

    def set_statistics(self, prediction: Prediction) -> dict[str, Tensor]:
        """The min and max of the map maxima over a scored set, which the few-shot image score min-max
        normalises with (``{}`` for a zero-shot or empty prediction)."""
        maxima = prediction.extras.get("map_max")
        if maxima is None or not len(maxima):
            return {}
        maxima = maxima.float()
        return {"map_max_min": maxima.min(), "map_max_max": maxima.max()}

    def freeze_set_statistics(self, statistics: dict[str, Tensor] | None) -> None:
        """Score every later set with these statistics (a saved detector: those of the set its run
        scored), so an image scores the same alone or in any batch; None: each set's own again."""
        if statistics is None:
            vars(self).pop("frozen_set_statistics", None)  # back to the class default, and out of the state
            return
        missing = {"map_max_min", "map_max_max"} - set(statistics)
        if statistics and missing:
            raise ValueError(f"APRIL-GAN set statistics lack {sorted(missing)}")
        device = self.text_classifier.device
        self.frozen_set_statistics = {
            name: value.detach().float().to(device) for name, value in statistics.items()
        }

    def postprocess_set(
        self, prediction: Prediction, statistics: dict[str, Tensor] | None = None
    ) -> Prediction:
        """Few-shot image score of a whole category: ``0.5 * (text + minmax(map maxima))``.

        The min-max runs over the category's test set, as in the reference test script. A category
        whose map maxima are all equal gets a zero normalised term (the reference would divide by 0).
        Zero-shot predictions (no ``map_max``) are returned unchanged.

        Args:
            prediction: the set's prediction from :meth:`score`.
            statistics: the min and max of :meth:`set_statistics` to normalise with instead of the set's
                own; default the frozen ones (:meth:`freeze_set_statistics`), else the set's own.
        """
        if "map_max" not in prediction.extras:
            return prediction
        text = prediction.extras["text_probability"].float()
        maxima = prediction.extras["map_max"].float()
        if not len(maxima):
            return Prediction(text, prediction.anomaly_map, prediction.extras)
        if statistics is None:
            statistics = self.frozen_set_statistics
        if statistics is None:
            statistics = self.set_statistics(prediction)
        if "map_max_min" not in statistics or "map_max_max" not in statistics:
            raise ValueError(
                f"APRIL-GAN few-shot scores need map_max_min and map_max_max, not {sorted(statistics)}"
            )
        low = statistics["map_max_min"].to(maxima)
        high = statistics["map_max_max"].to(maxima)
        # Without a data-dependent branch, so that an exported graph computes the same step.
        span = high - low
        positive = span > 0
        normalised = (maxima - low) / torch.where(positive, span, torch.ones_like(span))
        normalised = torch.where(positive, normalised, torch.zeros_like(normalised))
        return Prediction(0.5 * (text + normalised), prediction.anomaly_map, prediction.extras)

    def forward(self, images: Tensor) -> Prediction:
        """Score ``[B, 3, H, W]`` images: ``score(frozen_features(images))`` (before the set step)."""
        return self.score(self.frozen_features(images))

    def export_module(self) -> ScoringGraph:
        """The export graph: normalised images -> (image score, map) with the text classifier, the
        projections, the few-shot memory and the frozen set statistics baked in (a model with a memory
        and no frozen statistics is refused by :func:`~anomaly_vlm.methods.contract.export_module`)."""
        return ScoringGraph(self)


def _block_key(layer: int) -> str:
    return f"block_{layer}"
