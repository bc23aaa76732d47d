"""AA-CLIP: anomaly-aware residual adapters in both CLIP encoders, trained in two stages (pure torch).

Paper: Ma et al., "AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP", CVPR 2025.
Where the paper and the official code (Mwxinnn/AA-CLIP) differ, this follows the code, which produced the
published numbers; each such point is stated where it is implemented.

Forward pass (``model/adapter.py`` of the official code):

* Text: residual adapters after the first ``text_adapt_until`` text blocks (3 of 12); the end token after
  ``ln_final`` goes through a learned head ``LeakyReLU(Linear(text_width -> D))`` **instead of** CLIP's
  ``text_projection`` (the code comments the projection out). Sentences: 3 normal and 5 abnormal states x
  2 templates, each embedding L2-normalised, averaged per state, re-normalised -> ``[2, D]``.
* Image: residual adapters after the first ``image_adapt_until`` vision blocks (6 of 24); the taps
  (``levels``, 6/12/18/24) are taken after the adapters, CLS dropped, ``ln_post``, one learned
  ``Linear(width -> D)`` per level (no bias, no activation: ``--relu`` is off in the released script),
  L2-normalised. The detection feature is the mean over patches of ``L2(det_proj(ln_post(last tap)))``
  (not re-normalised; the CLS token is unused).
* Stage 1 (text adapters) learns against frozen targets of a second CLIP whose attention in blocks
  ``surgery_start .. depth`` is replaced by V-V attention (one stream, MLPs kept): per level
  ``L2(ln_post(patches) @ proj) + L2(ln_post(CLS) @ proj)`` of the plain CLIP (not re-normalised).
* Stage 2 (image adapters and projections) learns against the text features frozen after stage 1.
* Test: image score ``(det . t_abnormal + 1) / 2``; per level the grid map
  ``(100 s_abnormal + 1 - 100 s_normal) / 2``, Gaussian-blurred on the grid (kornia, 7 x 7, sigma 1,
  reflect), bilinear (``align_corners=True``) to the input size, summed over levels. A category's maps and
  image scores are then min-max normalised over its test set and the image score becomes
  ``0.5 * max(map) + 0.5 * score`` (``metrics_eval``): a declared set step with freezable statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.adapters import (
    ResidualAdapter,
    encode_image_adapted,
    encode_image_value_attention,
    encode_text_adapted,
)
from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.methods.ops import resolve_stages

#: Which levels the stage-1 (text) loss sums: ``last`` is what the official loop computes (``loss =``
#: overwrites the loss of every earlier level), ``all`` the sum over levels the loop was written for.
TEXT_LOSS_LEVELS = ("last", "all")
SET_STATISTICS = ("map_min", "map_max", "score_min", "score_max")


def scaled_depth(reference: int, reference_depth: int, depth: int, key: str) -> int:
    """``reference`` blocks of a ``reference_depth``-block encoder scaled to ``depth`` blocks (at least 1)."""
    value = max(1, round(reference * depth / reference_depth))
    if value > depth:
        raise ValueError(f"{key}: {value} blocks of an encoder of {depth}")
    return value


def grid_blur(maps: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Gaussian blur of ``[B, H, W]`` grid maps as kornia's ``gaussian_blur2d`` with its defaults: a
    ``kernel_size`` window of normalised Gaussian samples, border ``reflect`` (``c b | a b c | b a``)."""
    if kernel_size <= 1 or sigma <= 0:
        return maps
    radius = kernel_size // 2
    offsets = torch.arange(kernel_size, device=maps.device, dtype=maps.dtype) - kernel_size // 2
    if kernel_size % 2 == 0:
        offsets = offsets + 0.5
    kernel = torch.exp(-(offsets**2) / (2.0 * float(sigma) ** 2))
    kernel = kernel / kernel.sum()
    x = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def augment(
    images: Tensor, masks: Tensor, generator: torch.Generator, color: bool, fill: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """The official training augmentation (``dataset/__init__.py``), drawn per image from ``generator``.

    ``color`` (image stage only): brightness, contrast and saturation jitter (factor in [0.5, 1.5]), each
    with probability 0.7, on the ``[0, 1]`` images. Then, on each image and its mask together: rotation up
    to 30 degrees (p 0.5), translation up to 15 % (p 0.5), horizontal and vertical flips (p 0.5 each),
    nearest-neighbour, filling images with ``fill`` (the normalisation mean: the official code transforms
    normalised images and fills with 0, the same pixels) and masks with 0. The official code jitters the
    PIL image before resizing it; here the resized image is jittered.

    Returns:
        The ``[B, 3, S, S]`` images in ``[0, 1]`` and the ``[B, S, S]`` masks.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    def draw() -> float:
        return float(torch.rand((), generator=generator))

    if color:
        jittered = []
        for image in images:
            for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
                if draw() < 0.7:
                    image = adjust(image, 0.5 + draw())
            jittered.append(image.clamp(0, 1))
        images = torch.stack(jittered)
    size = images.shape[-1]
    out_pixels, out_masks = [], []
    nearest = InterpolationMode.NEAREST
    fill = [float(value) for value in fill] + [0.0]
    for image, mask in zip(images, masks, strict=True):
        both = torch.cat([image, mask[None].to(image.dtype)])
        if draw() < 0.5:
            both = TF.rotate(both, -30.0 + 60.0 * draw(), interpolation=nearest, fill=fill)
        if draw() < 0.5:
            shift = [round((2 * draw() - 1) * 0.15 * size), round((2 * draw() - 1) * 0.15 * size)]
            both = TF.affine(
                both, angle=0.0, translate=shift, scale=1.0, shear=[0.0], interpolation=nearest, fill=fill
            )
        if draw() < 0.5:
            both = TF.horizontal_flip(both)
        if draw() < 0.5:
            both = TF.vertical_flip(both)
        out_pixels.append(both[:3])
        out_masks.append(both[3])
    return torch.stack(out_pixels), torch.stack(out_masks)


class AAClip(nn.Module):
    """Frozen CLIP with residual adapters in its first blocks, per-level projections and a text head.

    Args:
        backbone: frozen CLIP (published: OpenAI ViT-L-14-336 at 518 px, plain GELU, positional embedding
            resized bicubic with antialias: ``backbone=vit_l14_336``).
        levels: tapped blocks (1-based); None: 6/12/18/24 scaled to the depth.
        image_adapt_until: vision blocks followed by an adapter (1..n); None: 6 of 24, scaled.
        text_adapt_until: text blocks followed by an adapter; None: 3 of 12, scaled.
        image_adapt_weight, text_adapt_weight: share of the adapted output in the stream (0.1 each).
        relu: LeakyReLU after the segmentation and detection projections (``--relu``; off in the release).
        surgery_start: first block (1-based) whose attention the stage-1 target CLIP replaces by V-V
            attention; None: 6 of 24, scaled (``--surgery_until_layer 20`` replaces the last 19 blocks).
        surgery_mix_batch: the official V-V attention reads sequence-first tokens as batch-first, so it
            attends across the images of a batch at each token position; True (default) reproduces it,
            False attends across the tokens of each image, as V-V attention is meant to.
        text_loss_levels: ``last`` (official) or ``all`` (see :data:`TEXT_LOSS_LEVELS`).
        orthogonal_weight: weight of the stage-1 loss ``(mean_b <t_normal, t_abnormal>)^2`` (0.1).
        logit_scale: scale of the patch-text cosines in the maps (100).
        blur_kernel, blur_sigma: grid-level Gaussian blur of the test maps (industrial: 7, 1.0).
        image_score_weight: weight of the normalised image score against the normalised map maximum in the
            set step (industrial: 0.5; the official medical setting 0.0 uses the map maximum alone).
    """

    #: The adapters sit inside the vision blocks: nothing after the pixels is frozen.
    cacheable = False
    transductive = False
    frozen_set_statistics: dict[str, Tensor] | None = None

    def __init__(
        self,
        backbone: FrozenCLIP,
        levels: Sequence[int] | None = None,
        image_adapt_until: int | None = None,
        text_adapt_until: int | None = None,
        image_adapt_weight: float = 0.1,
        text_adapt_weight: float = 0.1,
        relu: bool = False,
        surgery_start: int | None = None,
        surgery_mix_batch: bool = True,
        text_loss_levels: str = "last",
        orthogonal_weight: float = 0.1,
        logit_scale: float = 100.0,
        blur_kernel: int = 7,
        blur_sigma: float = 1.0,
        image_score_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        depth, text_depth = backbone.num_layers, backbone.text_num_layers
        self.levels = resolve_stages(levels, backbone, key="method.levels")
        self.image_adapt_until = self._depth(image_adapt_until, 6, 24, depth, "method.image_adapt_until")
        self.text_adapt_until = self._depth(text_adapt_until, 3, 12, text_depth, "method.text_adapt_until")
        self.surgery_start = self._depth(surgery_start, 6, 24, depth, "method.surgery_start")
        if text_loss_levels not in TEXT_LOSS_LEVELS:
            raise ValueError(
                f"method.text_loss_levels={text_loss_levels!r} is not one of {list(TEXT_LOSS_LEVELS)}"
            )
        if int(blur_kernel) < 0:
            raise ValueError(f"method.blur_kernel={blur_kernel} must be 0 (off) or a window size")
        if not 0.0 <= float(image_score_weight) <= 1.0:
            raise ValueError(f"method.image_score_weight={image_score_weight} must lie in [0, 1]")
        self.relu = bool(relu)
        self.surgery_mix_batch = bool(surgery_mix_batch)
        self.text_loss_levels = text_loss_levels
        self.orthogonal_weight = float(orthogonal_weight)
        self.logit_scale = float(logit_scale)
        self.blur_kernel = int(blur_kernel)
        self.blur_sigma = float(blur_sigma)
        self.image_score_weight = float(image_score_weight)

        width, text_width, embed = backbone.width, backbone.text_width, backbone.embed_dim
        self.image_adapters = nn.ModuleList(
            ResidualAdapter(width, image_adapt_weight) for _ in range(self.image_adapt_until)
        )
        self.seg_projections = nn.ModuleList(nn.Linear(width, embed, bias=False) for _ in self.levels)
        self.det_projection = nn.Linear(width, embed, bias=False)
        self.text_adapters = nn.ModuleList(
            ResidualAdapter(text_width, text_adapt_weight) for _ in range(self.text_adapt_until)
        )
        self.text_head = nn.Linear(text_width, embed, bias=False)
        for parameter in self.learned_parameters():
            nn.init.xavier_uniform_(parameter)
        #: ``[2, D]`` text features (normal, abnormal) of the category being scored (:meth:`set_text`).
        self.text_classifier: Tensor | None = None

    @staticmethod
    def _depth(value: int | None, reference: int, reference_depth: int, depth: int, key: str) -> int:
        if value is None:
            return scaled_depth(reference, reference_depth, depth, key)
        value = int(value)
        if not 1 <= value <= depth:
            raise ValueError(f"{key}={value} outside 1..{depth}")
        return value

    def learned_parameters(self) -> list[nn.Parameter]:
        return [*self.text_parameters(), *self.image_parameters()]

    def text_parameters(self) -> list[nn.Parameter]:
        """What stage 1 trains: the text adapters and the text head."""
        return [*self.text_adapters.parameters(), *self.text_head.parameters()]

    def image_parameters(self) -> list[nn.Parameter]:
        """What stage 2 trains: the image adapters and the projections."""
        return [
            *self.image_adapters.parameters(),
            *self.seg_projections.parameters(),
            *self.det_projection.parameters(),
        ]

    # ----- frozen features ------------------------------------------------------------------------
    def feature_spec(self) -> dict[str, Any]:
        return {"method": "aaclip", "inputs": "pixels"}

    @torch.no_grad()
    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """The normalised pixels: the adapters act inside the first blocks, so nothing later is frozen."""
        return {"pixels": images if normalized else self.backbone.normalize(images)}

    # ----- encoders -------------------------------------------------------------------------------
    def _project(self, projection: nn.Linear, tokens: Tensor) -> Tensor:
        out = projection(tokens)
        return F.leaky_relu(out, 0.01) if self.relu else out

    def encode_image(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per level unit ``[B, N, D]`` patch features, and the ``[B, D]`` detection feature."""
        hooks = {index: adapter for index, adapter in enumerate(self.image_adapters, start=1)}
        # The official blocks return their attention weights (nn.MultiheadAttention's default
        # need_weights=True), which computes them explicitly; a fused kernel rounds otherwise, and an adapter
        # pre-activation within that rounding of 0 takes the other LeakyReLU slope (and 100 times the
        # gradient). In float32, the official precision, ours computes them as the official code does; the
        # low precisions keep the fused kernel (no official counterpart; speed and memory are their point).
        explicit = self.backbone.compute_dtype == torch.float32
        encoded = encode_image_adapted(
            self.backbone, pixels, hooks, self.levels, normalized=True, explicit_attention=explicit
        )
        tokens = [self.backbone.ln_post(encoded.layer_tokens[level][:, 1:]) for level in self.levels]
        patches = [
            F.normalize(self._project(projection, level), dim=-1)
            for projection, level in zip(self.seg_projections, tokens, strict=True)
        ]
        detection = F.normalize(self._project(self.det_projection, tokens[-1]), dim=-1).mean(dim=1)
        return patches, detection

    def encode_sentences(self, token_ids: Tensor) -> Tensor:
        """``[S, D]`` sentence embeddings through the text adapters and the text head (not normalised)."""
        hooks = {index: adapter for index, adapter in enumerate(self.text_adapters, start=1)}
        ends = encode_text_adapted(self.backbone, token_ids, hooks, project=False)
        return F.leaky_relu(self.text_head(ends), 0.01)

    def encode_text(self, token_ids: Tensor, num_normal: int) -> Tensor:
        """``[2, D]`` unit text features (normal, abnormal) of one category's sentences."""
        embeddings = F.normalize(self.encode_sentences(token_ids), dim=-1)
        normal = F.normalize(embeddings[:num_normal].mean(dim=0), dim=-1)
        abnormal = F.normalize(embeddings[num_normal:].mean(dim=0), dim=-1)
        return torch.stack([normal, abnormal])

    @torch.no_grad()
    def surgery_targets(self, pixels: Tensor) -> list[Tensor]:
        """Stage-1 image features per level ``[B, N, D]``: the V-V tower's unit projected patches plus the
        plain CLIP's unit pooled embedding (the sum is not re-normalised, as in the code)."""
        backbone = self.backbone
        taps = encode_image_value_attention(
            backbone, pixels, self.surgery_start, self.levels, self.surgery_mix_batch, normalized=True
        )
        pooled = F.normalize(backbone.encode_image(pixels, normalized=True).global_embedding, dim=-1)
        return [
            F.normalize(backbone.project(backbone.ln_post(taps[level][:, 1:])), dim=-1) + pooled[:, None]
            for level in self.levels
        ]

    # ----- maps -----------------------------------------------------------------------------------
    def _grid(self, logits: Tensor) -> Tensor:
        """``[B, N, C]`` -> ``[B, C, h, w]``."""
        side_h, side_w = self.backbone.grid_size
        return logits.transpose(1, 2).reshape(logits.shape[0], logits.shape[-1], side_h, side_w)

    def training_probabilities(self, patches: Tensor, text: Tensor, size: tuple[int, int]) -> Tensor:
        """``[B, 2, H, W]``: softmax over (normal, abnormal) of ``100 * patch . text``, upsampled
        bilinearly (``align_corners=True``) BEFORE the softmax, as ``calculate_similarity_map``."""
        logits = self.logit_scale * torch.einsum("bnd,bcd->bnc", patches, text)
        upsampled = F.interpolate(self._grid(logits), size=size, mode="bilinear", align_corners=True)
        return upsampled.softmax(dim=1)

    def segmentation_loss(self, probabilities: Tensor, target: Tensor) -> Tensor:
        """focal + dice(normal, 1 - gt) + dice(abnormal, gt) (``calculate_seg_loss``)."""
        loss = focal_loss(probabilities, target)
        loss = loss + dice_loss(probabilities[:, 0], 1.0 - target)
        return loss + dice_loss(probabilities[:, 1], target)

    # ----- training -------------------------------------------------------------------------------
    def text_stage_loss(self, pixels: Tensor, masks: Tensor, text: Tensor) -> dict[str, Tensor]:
        """Stage-1 loss of a batch: ``text [B, 2, D]`` is each image's category text (with grad)."""
        targets = self.surgery_targets(pixels)
        target = (masks > 0.5).to(text.dtype)
        size = tuple(masks.shape[-2:])
        orthogonal = (text[:, 0] * text[:, 1]).sum(dim=-1).mean() ** 2
        levels = targets[-1:] if self.text_loss_levels == "last" else targets
        segmentation = text.new_zeros(())
        for features in levels:
            segmentation = segmentation + self.segmentation_loss(
                self.training_probabilities(features, text, size), target
            )
        total = segmentation + len(levels) * self.orthogonal_weight * orthogonal
        return {"loss": total, "segmentation_loss": segmentation, "orthogonal_loss": orthogonal}

    def image_stage_loss(
        self, pixels: Tensor, masks: Tensor, labels: Tensor, text: Tensor
    ) -> dict[str, Tensor]:
        """Stage-2 loss: cross-entropy of the raw cosines ``det . text`` (no temperature) against the
        labels, plus the segmentation loss of every level; ``text [B, 2, D]`` is frozen."""
        patches, detection = self.encode_image(pixels)
        logits = torch.einsum("bd,bcd->bc", detection, text)
        classification = F.cross_entropy(logits, (labels > 0.5).long())
        target = (masks > 0.5).to(detection.dtype)
        size = tuple(masks.shape[-2:])
        segmentation = detection.new_zeros(())
        for features in patches:
            segmentation = segmentation + self.segmentation_loss(
                self.training_probabilities(features, text, size), target
            )
        total = classification + segmentation
        return {"loss": total, "classification_loss": classification, "segmentation_loss": segmentation}

    # ----- test -----------------------------------------------------------------------------------
    def set_text(self, text: Tensor | None) -> None:
        """Score the following images against ``text`` (``[2, D]``, from :meth:`encode_text`)."""
        self.text_classifier = None if text is None else text.detach()

    def level_maps(self, patches: list[Tensor], text: Tensor) -> list[Tensor]:
        """Per level ``[B, H, W]`` test maps at the input size (see the module docstring)."""
        size = (self.backbone.image_size, self.backbone.image_size)
        maps = []
        for features in patches:
            logits = self._grid(self.logit_scale * features @ text.T)
            grid = (logits[:, 1] + 1.0 - logits[:, 0]) / 2.0
            grid = grid_blur(grid, self.blur_kernel, self.blur_sigma)
            up = F.interpolate(grid.unsqueeze(1), size=size, mode="bilinear", align_corners=True)
            maps.append(up[:, 0])
        return maps

    @torch.no_grad()
    def score(self, features: FrozenFeatures) -> Prediction:
        """Raw image score and summed level maps, before the set step (:meth:`postprocess_set`)."""
        text = self.text_classifier
        if text is None:
            raise RuntimeError("AAClip.score needs set_text() first (the text features name the category)")
        patches, detection = self.encode_image(features["pixels"])
        scores = (detection @ text[1] + 1.0) / 2.0
        maps = torch.stack(self.level_maps(patches, text)).sum(dim=0)
        return Prediction(scores, maps)

    def forward(self, images: Tensor) -> Prediction:
        return self.score(self.frozen_features(images))

    # ----- the set step: per-category min-max of maps and scores ------------------------------------
    uses_set_statistics = True

    def set_statistics(self, prediction: Prediction) -> dict[str, Tensor]:
        """Min and max over the set of all map values and of the image scores."""
        if not len(prediction):
            return {}
        maps, scores = prediction.anomaly_map.float(), prediction.image_score.float()
        return {
            "map_min": maps.min(),
            "map_max": maps.max(),
            "score_min": scores.min(),
            "score_max": scores.max(),
        }

    def freeze_set_statistics(self, statistics: dict[str, Tensor] | None) -> None:
        """Normalise every later set with these statistics (a saved detector); None: each set's own."""
        if statistics is None:
            vars(self).pop("frozen_set_statistics", None)
            return
        missing = set(SET_STATISTICS) - set(statistics)
        if statistics and missing:
            raise ValueError(f"AA-CLIP set statistics lack {sorted(missing)}")
        device = self.det_projection.weight.device
        self.frozen_set_statistics = {
            name: value.detach().float().to(device) for name, value in statistics.items()
        }

    @staticmethod
    def _min_max(values: Tensor, low: Tensor, high: Tensor) -> Tensor:
        # The code normalises only when the maximum is not exactly 1 (already normalised); no data-dependent
        # branch, so that an exported graph computes the same step. A constant set stays as it is.
        span = high - low
        apply = (high != 1) & (span > 0)
        normalised = (values - low) / torch.where(apply, span, torch.ones_like(span))
        return torch.where(apply, normalised, values)

    def postprocess_set(
        self, prediction: Prediction, statistics: dict[str, Tensor] | None = None
    ) -> Prediction:
        """``metrics_eval``: maps and image scores min-max normalised over the category's set, image score
        ``(1 - w) * max(normalised map) + w * normalised score`` with ``w = image_score_weight``."""
        if not len(prediction):
            return prediction
        if statistics is None:
            statistics = self.frozen_set_statistics
        if statistics is None:
            statistics = self.set_statistics(prediction)
        missing = set(SET_STATISTICS) - set(statistics)
        if missing:
            raise ValueError(f"AA-CLIP set statistics lack {sorted(missing)}")
        maps, scores = prediction.anomaly_map.float(), prediction.image_score.float()
        stats = {name: statistics[name].to(maps) for name in SET_STATISTICS}
        maps = self._min_max(maps, stats["map_min"], stats["map_max"])
        scores = self._min_max(scores, stats["score_min"], stats["score_max"])
        weight = self.image_score_weight
        combined = (1.0 - weight) * maps.flatten(1).amax(dim=1) + weight * scores
        return Prediction(combined, maps, prediction.extras)

    def export_module(self) -> ScoringGraph:
        """The export graph: normalised images -> (image score, map) with the text features, the adapters
        and the frozen set statistics baked in (refused while the statistics are not frozen)."""
        return ScoringGraph(self)

    def extra_repr(self) -> str:
        return (
            f"levels={list(self.levels)}, image_adapt_until={self.image_adapt_until}, "
            f"text_adapt_until={self.text_adapt_until}, surgery_start={self.surgery_start}, "
            f"surgery_mix_batch={self.surgery_mix_batch}, text_loss_levels={self.text_loss_levels}"
        )


__all__ = ["TEXT_LOSS_LEVELS", "AAClip", "augment", "grid_blur", "scaled_depth"]
