"""WinCLIP and WinCLIP+: window-based zero-/few-shot anomaly classification and segmentation.

Paper: Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023.

Scoring follows the paper and its peer implementation (anomalib ``models/image/winclip``), which agree
on every step used here:

- class score of an embedding f: ``softmax(cos(f, [t_normal, t_anomalous]) / 0.07)[anomalous]``;
- zero-shot image score ``s0`` = class score of the image (CLS) embedding;
- window embeddings: the CLS token plus the k x k patch tokens of a window (positional embedding
  added, before ``ln_pre``) run through ``ln_pre``, all blocks, ``ln_post``, CLS pooling and ``proj``;
  for every k in ``scales`` with stride 1;
- per-scale map: harmonic mean of the scores of all windows covering a patch;
- zero-shot map ``M0`` = harmonic mean of (``s0`` broadcast, ``M_2``, ``M_3``, ...);
- WinCLIP+ (k normal reference images): for query patch tokens (after ``ln_post``, unprojected) and
  window embeddings of each scale, ``min over all reference items of the same kind of (1 - cos) / 2``;
  window scores harmonically aggregated per scale; ``M_W`` = arithmetic mean of the patch map and the
  per-scale maps; final map ``(M0 + M_W) / 2``, image score ``(s0 + max M_W) / 2``;
- maps upsampled bilinearly from the patch grid to the input size, no blur.

Speed without changing the numbers: all windows of a batch and scale go through the transformer as one
batched (chunked) call; ``ln_pre`` is applied once per token before windows are gathered (it acts per
token); in the last block only the CLS row is finished (the pooled output depends on nothing else);
window aggregation and reference distances are matrix products; reference memories and the text
classifier are computed once per category.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.windows import (
    coverage_matrix,
    encode_windows,
    harmonic_aggregation,
    is_plain_block,
    window_indices,
)


def class_scores(embeddings: Tensor, text_classifier: Tensor, temperature: float) -> Tensor:
    """Anomalous-class probability of ``softmax(cos(embedding, [normal, anomalous]) / temperature)``.

    ``text_classifier`` rows must be unit vectors; embeddings are normalised here.
    """
    cosine = F.normalize(embeddings, dim=-1) @ text_classifier.T
    return (cosine / temperature).softmax(dim=-1)[..., 1]


def min_cosine_distance(queries: Tensor, memory: Tensor, chunk: int = 65536) -> Tensor:
    """``min over memory rows of (1 - cos(query, row)) / 2`` for ``[B, Q, C]`` queries, clamped at 0.

    Args:
        queries: ``[B, Q, C]`` (normalised here).
        memory: ``[M, C]`` unit rows.
        chunk: memory rows per matrix product (bounds the ``[B, Q, chunk]`` similarity block).
    """
    unit = F.normalize(queries, dim=-1)
    best = None
    for start in range(0, memory.shape[0], chunk):
        similarity = (unit @ memory[start : start + chunk].T).amax(dim=-1)
        best = similarity if best is None else torch.maximum(best, similarity)
    # Rounding can push cos a hair above 1; a negative distance would make the harmonic means below
    # meaningless (anomalib does not clamp; it only matters for near-duplicates of a reference).
    return ((1.0 - best) / 2.0).clamp_min(0.0)


class WinCLIPModel(nn.Module):
    """WinCLIP (zero-shot) and WinCLIP+ (few-shot) on a frozen CLIP ViT that pools its CLS token.

    Paper: Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023.

    Args:
        backbone: the frozen CLIP; its patch grid sets the window layout.
        scales: window sizes in patches (paper: 2 and 3), stride 1.
        temperature: softmax temperature of the class scores (CLIP's 0.07).
        window_batch_size: windows per transformer call (bounds memory; no effect on the numbers).
        cls_only_last_block: finish only the CLS row in the last block of window passes (exact; saves
            the work on rows that pooling discards). Falls back to the full block when the block type
            is not recognised.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        scales: Sequence[int] = (2, 3),
        temperature: float = 0.07,
        window_batch_size: int = 1024,
        cls_only_last_block: bool = True,
    ) -> None:
        super().__init__()
        if not scales:
            raise ValueError(
                "method.scales is empty; WinCLIP needs at least one window scale (paper: [2, 3])"
            )
        if window_batch_size < 1:
            raise ValueError(f"method.window_batch_size={window_batch_size} must be positive")
        self.backbone = backbone
        self.scales = tuple(int(scale) for scale in scales)
        self.temperature = float(temperature)
        self.window_batch_size = int(window_batch_size)
        self.cls_only_last_block = bool(cls_only_last_block) and is_plain_block(backbone.blocks[-1])
        grid = backbone.grid_size
        for index, scale in enumerate(self.scales):
            indices = window_indices(grid, scale)
            self.register_buffer(f"window_index_{index}", indices, persistent=False)
            self.register_buffer(
                f"coverage_{index}", coverage_matrix(indices, backbone.num_patches), persistent=False
            )
        self.register_buffer("text_classifier", torch.zeros(2, backbone.embed_dim), persistent=False)
        self.has_text = False
        self.reference_patches: Tensor | None = None
        self.reference_windows: list[Tensor] | None = None

    # ----- per-category state ---------------------------------------------------------------------
    def window_index(self, scale_index: int) -> Tensor:
        return getattr(self, f"window_index_{scale_index}")

    def coverage(self, scale_index: int) -> Tensor:
        return getattr(self, f"coverage_{scale_index}")

    def set_text_classifier(self, classifier: Tensor) -> None:
        """``[2, D]`` unit rows (normal, anomalous)."""
        if classifier.shape != self.text_classifier.shape:
            raise ValueError(
                f"text classifier of shape {tuple(classifier.shape)}, "
                f"expected {tuple(self.text_classifier.shape)}"
            )
        self.text_classifier = classifier.to(self.text_classifier)
        self.has_text = True

    @torch.no_grad()
    def set_reference_images(self, images: Tensor | None, normalized: bool = False) -> None:
        """Build the WinCLIP+ memories from ``[K, 3, H, W]`` normal images (None: zero-shot)."""
        if images is None or images.shape[0] == 0:
            self.set_reference_features(None)
            return
        self.set_reference_features(self.frozen_features(images, normalized=normalized))

    @torch.no_grad()
    def set_reference_features(self, features: FrozenFeatures | None) -> None:
        """Build the WinCLIP+ memories from the frozen features of K normal images (None: zero-shot).

        Keeps unit-norm patch tokens ``[K * N, W]`` and, per scale, unit-norm window embeddings
        ``[K * n_windows, D]``; computed once per category.
        """
        if features is None or features["patch_tokens"].shape[0] == 0:
            self.reference_patches, self.reference_windows = None, None
            return
        self.reference_patches = F.normalize(features["patch_tokens"].flatten(0, 1), dim=-1)
        self.reference_windows = [
            F.normalize(features[_window_key(index)].flatten(0, 1), dim=-1)
            for index in range(len(self.scales))
        ]

    @property
    def few_shot(self) -> bool:
        return self.reference_patches is not None

    # ----- frozen features ------------------------------------------------------------------------
    cacheable = True

    def feature_spec(self) -> dict[str, Any]:
        # cls_only_last_block is exact, so it does not change the features.
        return {"method": "winclip", "scales": list(self.scales)}

    @torch.no_grad()
    def frozen_features(
        self, images: Tensor, normalized: bool = False, chunked: bool = True
    ) -> FrozenFeatures:
        """``image_embedding [B, D]``, ``patch_tokens [B, N, W]`` (after ln_post, unprojected) and
        ``windows_<i> [B, n_windows, D]`` for the ``i``-th scale.

        ``chunked=False`` runs all windows of the batch in one transformer call whatever
        ``window_batch_size`` says (an exported graph must not bake the chunk bounds of its trace batch).
        """
        image_embeddings, patch_tokens, windows = self.encode(images, normalized=normalized, chunked=chunked)
        features = {"image_embedding": image_embeddings, "patch_tokens": patch_tokens}
        for index, window in enumerate(windows):
            features[_window_key(index)] = window
        return features

    # ----- encoding -------------------------------------------------------------------------------
    def encode(
        self, images: Tensor, normalized: bool = False, chunked: bool = True
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Image embeddings ``[B, D]``, patch tokens ``[B, N, W]`` (after ln_post, unprojected) and
        window embeddings ``[B, n_windows, D]`` per scale."""
        backbone = self.backbone
        # ln_pre acts per token, so applying it before gathering windows is the same as applying it
        # inside every window pass, at a fraction of the cost.
        tokens = backbone.ln_pre(backbone.embed_patches(images, normalized=normalized))
        final, _ = backbone.run_blocks(tokens, apply_ln_pre=False)
        final = backbone.ln_post(final)
        image_embeddings = backbone.project(final[:, 0])
        patch_tokens = final[:, 1:]
        windows = [self.encode_windows(tokens, index, chunked) for index in range(len(self.scales))]
        return image_embeddings, patch_tokens, windows

    def encode_windows(self, tokens: Tensor, scale_index: int, chunked: bool = True) -> Tensor:
        """Window embeddings ``[B, n_windows, D]`` from ``ln_pre``-ed tokens ``[B, 1 + N, W]``
        (``chunked``: at most ``window_batch_size`` windows per transformer call)."""
        return encode_windows(
            self.backbone,
            tokens,
            self.window_index(scale_index),
            self.window_batch_size if chunked else None,
            self.cls_only_last_block,
        )

    # ----- scoring --------------------------------------------------------------------------------
    def score(self, features: FrozenFeatures) -> Prediction:
        """Score images from their :meth:`frozen_features`."""
        if not self.has_text:
            raise RuntimeError("set_text_classifier(...) must be called before scoring (setup_category)")
        image_embeddings, patch_tokens = features["image_embedding"], features["patch_tokens"]
        windows = [features[_window_key(index)] for index in range(len(self.scales))]
        grid_h, grid_w = self.backbone.grid_size
        image_scores = class_scores(image_embeddings, self.text_classifier, self.temperature)

        # Zero-shot: harmonic mean over the image scale and every window scale.
        inverse_sum = image_scores.reciprocal()[:, None].expand(-1, grid_h * grid_w)
        for index, window in enumerate(windows):
            window_scores = class_scores(window, self.text_classifier, self.temperature)
            inverse_sum = inverse_sum + harmonic_aggregation(window_scores, self.coverage(index)).reciprocal()
        score_map = (len(windows) + 1) / inverse_sum

        if self.few_shot:
            few_shot_maps = [min_cosine_distance(patch_tokens, self.reference_patches)]
            for index, (window, memory) in enumerate(zip(windows, self.reference_windows, strict=True)):
                window_scores = min_cosine_distance(window, memory)
                few_shot_maps.append(harmonic_aggregation(window_scores, self.coverage(index)))
            few_shot_map = torch.stack(few_shot_maps).mean(dim=0)
            score_map = (score_map + few_shot_map) / 2
            image_scores = (image_scores + few_shot_map.amax(dim=-1)) / 2

        maps = F.interpolate(
            score_map.reshape(-1, 1, grid_h, grid_w),
            size=(self.backbone.image_size, self.backbone.image_size),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        return Prediction(image_scores, maps)

    def forward(self, images: Tensor, normalized: bool = False) -> Prediction:
        """Score ``[B, 3, H, W]`` images: ``score(frozen_features(images))``."""
        if not self.has_text:
            raise RuntimeError("set_text_classifier(...) must be called before scoring (setup_category)")
        return self.score(self.frozen_features(images, normalized=normalized))

    def export_module(self) -> ScoringGraph:
        """The export graph: normalised images -> (image score, map) with the text classifier and the
        WinCLIP+ memories baked in; all windows in one call (chunk bounds would fix the batch size)."""
        if not self.has_text:
            raise RuntimeError("set_text_classifier(...) must be called before export (setup_category)")
        return ScoringGraph(self, chunked=False)


def _window_key(scale_index: int) -> str:
    return f"windows_{scale_index}"


__all__ = [
    "WinCLIPModel",
    "class_scores",
    "coverage_matrix",
    "harmonic_aggregation",
    "min_cosine_distance",
    "window_indices",
]
