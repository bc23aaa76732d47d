"""Text-visual alignment strategies on one backbone, one tap set, one prompt set and one scoring rule.

A controlled comparison, not a published method: every strategy is composed of the shared parts the
published methods use, and only the way patch features reach the text space changes.

* ``none``: patch tokens of each tap through CLIP's own ``ln_post`` and ``proj`` (the naive dense baseline).
* ``windows``: CLS embeddings of sliding ``k x k`` windows, harmonically aggregated back to patches
  (WinCLIP; :mod:`anomaly_vlm.methods.windows`). Windows run the whole transformer, so they have no tap.
* ``surgery``: the value-value (V-V / DPAM) stream for the patch tokens (AnomalyCLIP's DPAM;
  :func:`anomaly_vlm.methods.ops.encode_dpam`). Training-free.
* ``linear``: one trained ``Linear(width -> embed_dim)`` per tap on the raw tokens (APRIL-GAN;
  :class:`anomaly_vlm.methods.projections.TapProjections`).
* ``text_prompts``: object-agnostic learnable text prompts, visual side frozen (AnomalyCLIP;
  :class:`anomaly_vlm.prompts.learnable.LearnablePromptEncoder`).
* ``visual_prompts``: learned static prompt tokens in the first vision blocks (AdaCLIP's static visual
  prompts; :meth:`anomaly_vlm.backbones.clip.FrozenCLIP.encode_image_prompted`).
* ``both_prompts`` = ``text_prompts+visual_prompts`` (static learned prompts on both sides).
* ``hybrid_prompts``: AdaCLIP's static + dynamic (image-conditioned) prompts in both encoders, the text
  tokens inserted into the analysis's prompt set (:class:`anomaly_vlm.methods.hybrid_prompts.HybridPrompts`).
* ``cls_projection``: AdaCLIP's trained ``Linear(embed_dim -> embed_dim)`` of the pooled embedding.
* ``adaclip`` = ``linear+hybrid_prompts+cls_projection``: AdaCLIP's alignment, every part of it.

Parts combine with ``+`` (``surgery+text_prompts`` is AnomalyCLIP's alignment, ``adaclip`` AdaCLIP's). The
scoring rule is the same for all: per tap, ``softmax(logit_scale * cos(patch, [normal,
abnormal]))[abnormal]`` on the patch grid, averaged over the taps (over the window scales for
``windows``), upsampled bilinearly; the image score is the same rule on the pooled ``ln_post(CLS) @ proj``.
Training (strategies with trainable parts) uses one loss for all: cross-entropy of the image logits plus
focal and dice losses of the averaged map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.hybrid_prompts import CategoryText, HybridPrompts
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.methods.ops import default_dpam_start, encode_dpam, resolve_stages
from anomaly_vlm.methods.projections import TapProjections
from anomaly_vlm.methods.windows import (
    coverage_matrix,
    encode_windows,
    harmonic_aggregation,
    is_plain_block,
    window_indices,
)
from anomaly_vlm.prompts.learnable import LearnablePromptEncoder, LearnablePromptSet

#: The single parts a strategy is made of.
PARTS = ("windows", "surgery", "linear", "text_prompts", "visual_prompts", "hybrid_prompts", "cls_projection")
#: Parts with trained parameters; a strategy without any is training-free (no ``train_data`` needed).
TRAINED_PARTS = frozenset({"linear", "text_prompts", "visual_prompts", "hybrid_prompts", "cls_projection"})
#: Parts that change what the frozen pass computes (and so the feature cache's key).
FROZEN_PARTS = frozenset({"windows", "surgery", "linear", "visual_prompts", "hybrid_prompts"})
#: Names that stand for several parts.
SHORTHANDS = {
    "both_prompts": ("text_prompts", "visual_prompts"),
    "adaclip": ("linear", "hybrid_prompts", "cls_projection"),
}
#: Parts that cannot be combined: windows replace the tapped tokens; surgery is its own stream (no visual
#: prompts enter it) and ends in CLIP's projection (no trained one); hybrid prompts are a prompting of their
#: own on both sides.
EXCLUSIVE = (
    ("windows", "surgery"),
    ("windows", "linear"),
    ("windows", "visual_prompts"),
    ("windows", "hybrid_prompts"),
    ("windows", "cls_projection"),
    ("surgery", "linear"),
    ("surgery", "visual_prompts"),
    ("surgery", "hybrid_prompts"),
    ("hybrid_prompts", "text_prompts"),
    ("hybrid_prompts", "visual_prompts"),
)
#: The strategies of the analysis grid: each part alone, then the published methods' combinations.
STRATEGIES = (
    "none",
    "windows",
    "surgery",
    "linear",
    "text_prompts",
    "both_prompts",
    "surgery+text_prompts",
    "linear+both_prompts",
    "adaclip",
)
#: Each published method's alignment, as a strategy of the grid.
PUBLISHED_ALIGNMENT = {
    "winclip": "windows",
    "aprillab": "linear",
    "anomalyclip": "surgery+text_prompts",
    "adaclip": "adaclip",
}


def parse_alignment(alignment: str) -> frozenset[str]:
    """The parts of an ``alignment`` value (``none``, a part, a shorthand, or parts joined by ``+``).

    Raises:
        ValueError: an unknown part, or two parts that cannot be combined.
    """
    text = str(alignment).strip()
    if text == "none":
        return frozenset()
    parts: set[str] = set()
    for name in text.split("+"):
        name = name.strip()
        if name in SHORTHANDS:
            parts.update(SHORTHANDS[name])
        elif name in PARTS:
            parts.add(name)
        else:
            known = ", ".join(["none", *PARTS, *SHORTHANDS])
            raise ValueError(
                f"method.alignment={alignment}: unknown part '{name}' (known: {known}; join with +)"
            )
    for first, second in EXCLUSIVE:
        if first in parts and second in parts:
            raise ValueError(f"method.alignment={alignment}: '{first}' and '{second}' cannot be combined")
    return frozenset(parts)


class AlignmentModel(nn.Module):
    """Frozen CLIP + the alignment parts named by ``alignment``; everything else fixed.

    Args:
        backbone: frozen CLIP.
        alignment: the strategy (see :func:`parse_alignment` and the module docstring).
        layers: tap blocks (1-based); None: the 6/12/18/24 of 24 blocks scaled to the depth.
        logit_scale: the scale of the cosines before the two-way softmax (CLIP's 100).
        scales: window sizes in patches (``windows``; WinCLIP's 2 and 3).
        window_batch_size: windows per transformer call (memory only).
        dpam_start: first V-V block (``surgery``); None scales AnomalyCLIP's 6-of-24 to the depth.
        prompt_context: learnable context vectors per sentence (``text_prompts``; AnomalyCLIP's 12).
        deep_prompt_length, deep_prompt_depth: deep text prompt tokens and the text blocks ``2 ..
            depth`` they enter (AnomalyCLIP: 4 and 9; None: 9, capped by a shallower text encoder).
        visual_prompt_length, visual_prompt_depth: learned visual tokens per block and the first blocks
            they enter (``visual_prompts``; AdaCLIP: 5 and 4); for ``hybrid_prompts`` the tokens per block
            of both encoders and the blocks they enter (visual ``1 .. depth``, text ``2 .. depth``).
        init_std: standard deviation of the learned prompts' initialisation (0.02 in both methods).
    """

    #: Why no export graph exists (set with hybrid prompts), or None.
    export_unsupported: str | None = None

    def __init__(
        self,
        backbone: FrozenCLIP,
        alignment: str = "none",
        layers: Sequence[int] | None = None,
        logit_scale: float = 100.0,
        scales: Sequence[int] = (2, 3),
        window_batch_size: int = 1024,
        dpam_start: int | None = None,
        prompt_context: int = 12,
        deep_prompt_length: int = 4,
        deep_prompt_depth: int | None = None,
        visual_prompt_length: int = 5,
        visual_prompt_depth: int = 4,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.alignment = str(alignment)
        self.parts = parse_alignment(alignment)
        self.layers = resolve_stages(layers, backbone, key="method.layers")
        if logit_scale <= 0:
            raise ValueError(f"method.logit_scale={logit_scale} must be positive")
        self.logit_scale = float(logit_scale)
        self.register_buffer("text_classifier", torch.zeros(2, backbone.embed_dim), persistent=False)
        self.scales: tuple[int, ...] = ()
        if "windows" in self.parts:
            if not scales:
                raise ValueError(
                    "method.scales is empty; alignment=windows needs a window size (e.g. [2, 3])"
                )
            self.scales = tuple(int(scale) for scale in scales)
            self.window_batch_size = int(window_batch_size)
            # WinCLIP's exact shortcut: the last block finishes only the CLS row that pooling reads.
            self.cls_only_last_block = is_plain_block(backbone.blocks[-1])
            for index, scale in enumerate(self.scales):
                indices = window_indices(backbone.grid_size, scale)
                self.register_buffer(f"window_index_{index}", indices, persistent=False)
                self.register_buffer(
                    f"coverage_{index}", coverage_matrix(indices, backbone.num_patches), persistent=False
                )
        num_layers = backbone.num_layers
        self.dpam_start = default_dpam_start(num_layers) if dpam_start is None else int(dpam_start)
        if "surgery" in self.parts and not 1 <= self.dpam_start <= num_layers:
            raise ValueError(
                f"method.dpam_start={dpam_start} outside 1..{num_layers} of '{backbone.model_name}'"
            )
        self.projections = (
            TapProjections(backbone.width, backbone.embed_dim, len(self.layers))
            if "linear" in self.parts
            else None
        )
        self.prompt_encoder = None
        if "text_prompts" in self.parts:
            # AnomalyCLIP's 9, capped by a shallower text encoder; an explicit depth must fit (config check).
            depth = min(9, backbone.text_num_layers) if deep_prompt_depth is None else int(deep_prompt_depth)
            prompt_set = LearnablePromptSet(
                name="alignment_learned",
                context_length=int(prompt_context),
                deep_prompt_length=int(deep_prompt_length),
                deep_prompt_depth=depth,
                init_std=float(init_std),
                deep_prompt_fp16=False,
            )
            self.prompt_encoder = LearnablePromptEncoder(backbone, prompt_set)
        self.visual_prompts = None
        self.hybrid = None
        if "hybrid_prompts" in self.parts:
            depth, length = int(visual_prompt_depth), int(visual_prompt_length)
            limit = min(num_layers, backbone.text_num_layers)
            if not 1 <= depth <= limit or length < 1:
                raise ValueError(
                    f"method.visual_prompt_depth={visual_prompt_depth} must be in 1..{limit} (blocks of the "
                    f"smaller encoder) and method.visual_prompt_length={visual_prompt_length} at least 1"
                )
            # The grid computes in float32 throughout (no float16 rounding of tokens, as for text_prompts).
            self.hybrid = HybridPrompts(
                backbone.width,
                backbone.text_width,
                backbone.embed_dim,
                prompt_length=length,
                prompt_depth=depth,
                prompt_fp16=False,
                init_std=float(init_std),
            )
            self.export_unsupported = "its dynamic text prompts run the text encoder for each image"
        self.cls_projection = (
            nn.Linear(backbone.embed_dim, backbone.embed_dim) if "cls_projection" in self.parts else None
        )
        #: The tokenised prompt set of the category (hybrid prompts: the text depends on each image).
        self.category_text: CategoryText | None = None
        if "visual_prompts" in self.parts:
            depth = int(visual_prompt_depth)
            if not 1 <= depth <= num_layers or int(visual_prompt_length) < 1:
                raise ValueError(
                    f"method.visual_prompt_depth={visual_prompt_depth} must be in 1..{num_layers} and "
                    f"method.visual_prompt_length={visual_prompt_length} at least 1"
                )
            self.visual_prompts = nn.ParameterList(
                [
                    nn.Parameter(torch.randn(int(visual_prompt_length), backbone.width) * float(init_std))
                    for _ in range(depth)
                ]
            )
        #: Text features fixed for scoring (set per category); None computes them from the learned prompts.
        self.scoring_text: Tensor | None = None

    # ----- state --------------------------------------------------------------------------------------
    @property
    def learns_text(self) -> bool:
        return self.prompt_encoder is not None

    def set_category(self, text: CategoryText | None) -> None:
        """The category's tokenised prompt set (``hybrid_prompts``: the text is encoded per image)."""
        self.category_text = text

    def set_text_classifier(self, classifier: Tensor) -> None:
        """``[2, D]`` unit rows (normal, abnormal) of the category's prompt set (fixed-text strategies)."""
        if classifier.shape != self.text_classifier.shape:
            raise ValueError(
                f"text classifier of shape {tuple(classifier.shape)}, "
                f"expected {tuple(self.text_classifier.shape)}"
            )
        self.text_classifier = classifier.to(self.text_classifier)

    def text_features(self) -> Tensor:
        """``[2, D]`` unit text features: the learned prompts' or the category's classifier."""
        if self.scoring_text is not None:
            return self.scoring_text
        return self.prompt_encoder() if self.prompt_encoder is not None else self.text_classifier

    def text_for(self, features: FrozenFeatures) -> Tensor:
        """The text of these images: ``[B, 2, D]`` with hybrid prompts (generated from each image's
        prompt-free pooled embedding), else :meth:`text_features` ``[2, D]``."""
        if self.hybrid is None:
            return self.text_features()
        if self.category_text is None:
            raise RuntimeError("alignment=hybrid_prompts needs set_category() first (the prompts name it)")
        return self.hybrid.encode_prompted_text(
            self.backbone, self.category_text, features["global_embedding"]
        )

    # ----- frozen features ------------------------------------------------------------------------
    @property
    def cacheable(self) -> bool:
        # Visual prompts change the image pass itself: only the pixels are frozen then.
        return self.visual_prompts is None and self.hybrid is None

    def feature_spec(self) -> dict[str, Any]:
        return {
            "method": "alignment",
            "frozen": sorted(self.parts & FROZEN_PARTS),
            "layers": list(self.layers),
            "scales": list(self.scales),
            "dpam_start": self.dpam_start,
        }

    @torch.no_grad()
    def frozen_features(
        self, images: Tensor, normalized: bool = False, chunked: bool = True
    ) -> FrozenFeatures:
        """What no trained parameter touches.

        ``global_embedding [B, D]`` (``ln_post(CLS) @ proj``) always; then ``pixels`` (normalised) with
        visual prompts; ``windows_<i> [B, n_windows, D]`` per scale with windows; else ``tap_<l>`` per tap:
        raw tokens ``[B, N, W]`` for ``linear``, ``ln_post -> proj`` patch embeddings ``[B, N, D]`` of the
        plain (``none``) or V-V (``surgery``) stream otherwise. ``chunked=False`` runs all windows in one
        call (an exported graph must not bake the chunk bounds of its trace batch).
        """
        backbone = self.backbone
        if self.visual_prompts is not None or self.hybrid is not None:
            pixels = images if normalized else backbone.normalize(images)
            pooled = backbone.encode_image(pixels, normalized=True).global_embedding
            return {"global_embedding": pooled, "pixels": pixels}
        if "windows" in self.parts:
            tokens = backbone.ln_pre(backbone.embed_patches(images, normalized=normalized))
            final, _ = backbone.run_blocks(tokens, apply_ln_pre=False)
            features = {"global_embedding": backbone.project(backbone.ln_post(final[:, 0]))}
            for index in range(len(self.scales)):
                window_index = getattr(self, f"window_index_{index}")
                features[f"windows_{index}"] = encode_windows(
                    backbone,
                    tokens,
                    window_index,
                    self.window_batch_size if chunked else None,
                    self.cls_only_last_block,
                )
            return features
        if "surgery" in self.parts:
            pooled, patches = encode_dpam(
                backbone,
                images,
                self.layers,
                dpam_start=self.dpam_start,
                global_ln_post=True,
                normalized=normalized,
            )
            return {"global_embedding": pooled, **{f"tap_{layer}": patches[layer] for layer in self.layers}}
        encoded = backbone.encode_image(images, layers=self.layers, normalized=normalized)
        features = {"global_embedding": encoded.global_embedding}
        for layer in self.layers:
            tokens = encoded.layer_tokens[layer][:, 1:]
            features[f"tap_{layer}"] = (
                tokens if self.projections is not None else self._clip_projection(tokens)
            )
        return features

    def _clip_projection(self, tokens: Tensor) -> Tensor:
        return self.backbone.project(self.backbone.ln_post(tokens))

    # ----- the aligned patch features -----------------------------------------------------------------
    def aligned(self, features: FrozenFeatures) -> tuple[Tensor, list[Tensor]]:
        """The pooled embedding ``[B, D]`` and per tap the patch features in the text space ``[B, N, D]``."""
        prompted = self.visual_prompts is not None or self.hybrid is not None
        if self.hybrid is not None:
            encoded = self.hybrid.encode_prompted_image(
                self.backbone, features["pixels"], features["global_embedding"], self.layers
            )
        elif self.visual_prompts is not None:
            encoded = self.backbone.encode_image_prompted(
                features["pixels"], list(self.visual_prompts), self.layers, normalized=True
            )
        if prompted:
            pooled = encoded.global_embedding
            raw = [encoded.layer_tokens[layer][:, 1:] for layer in self.layers]
        else:
            pooled = features["global_embedding"]
            raw = [features[f"tap_{layer}"] for layer in self.layers]
        if self.cls_projection is not None:
            pooled = self.cls_projection(pooled)
        if self.projections is not None:
            return pooled, [
                projection(tokens) for projection, tokens in zip(self.projections, raw, strict=True)
            ]
        if prompted:
            return pooled, [self._clip_projection(tokens) for tokens in raw]
        return pooled, raw

    def _cosines(self, embeddings: Tensor, text: Tensor) -> Tensor:
        """``[..., 2]`` scaled cosines of ``[B, (N,) D]`` embeddings against ``[2, D]`` text, or against
        ``[B, 2, D]`` text of each image."""
        unit = F.normalize(embeddings, dim=-1)
        similarity = torch.einsum("b...d,bcd->b...c", unit, text) if text.dim() == 3 else unit @ text.T
        return self.logit_scale * similarity

    def _probability(self, embeddings: Tensor, text: Tensor) -> Tensor:
        """``[..., 2]`` softmax of the scaled cosines against (normal, abnormal)."""
        return self._cosines(embeddings, text).softmax(dim=-1)

    def patch_probabilities(self, features: FrozenFeatures, text: Tensor) -> tuple[Tensor, Tensor]:
        """Image logits ``[B, 2]`` and the abnormal probability on the patch grid ``[B, N]``, averaged over
        the taps (window scales)."""
        if "windows" in self.parts:
            pooled = features["global_embedding"]
            per_part = [
                harmonic_aggregation(
                    self._probability(features[f"windows_{index}"], text)[..., 1],
                    getattr(self, f"coverage_{index}"),
                )
                for index in range(len(self.scales))
            ]
        else:
            pooled, patches = self.aligned(features)
            per_part = [self._probability(tokens, text)[..., 1] for tokens in patches]
        return self._cosines(pooled, text), torch.stack(per_part).mean(dim=0)

    def _upsample(self, grid_values: Tensor) -> Tensor:
        side_h, side_w = self.backbone.grid_size
        size = (self.backbone.image_size, self.backbone.image_size)
        grid = grid_values.reshape(-1, 1, side_h, side_w)
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]

    def score(self, features: FrozenFeatures) -> Prediction:
        """Image score and map from :meth:`frozen_features` (the category's text set beforehand)."""
        with torch.no_grad():
            logits, patch = self.patch_probabilities(features, self.text_for(features))
        return Prediction(logits.softmax(dim=-1)[:, 1], self._upsample(patch))

    def forward(self, images: Tensor) -> Prediction:
        return self.score(self.frozen_features(images))

    def export_module(self) -> AlignmentGraph:
        """The export graph: normalised images -> (image score, map), the text features baked in."""
        with torch.no_grad():
            text = self.text_features().detach().clone()
        return AlignmentGraph(self, text)

    # ----- training -----------------------------------------------------------------------------------
    def loss_from_features(
        self, features: FrozenFeatures, masks: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        """One loss for every trainable strategy: CE(image logits, label) + focal + dice of the map."""
        logits, patch = self.patch_probabilities(features, self.text_for(features))
        global_loss = F.cross_entropy(logits, labels.long())
        side_h, side_w = self.backbone.grid_size
        abnormal = F.interpolate(
            patch.reshape(-1, 1, side_h, side_w), size=masks.shape[-2:], mode="bilinear", align_corners=False
        )
        probabilities = torch.cat([1.0 - abnormal, abnormal], dim=1)
        target = (masks > 0.5).to(probabilities.dtype)
        local = focal_loss(probabilities, target) + dice_loss(abnormal[:, 0], target)
        return {"loss": global_loss + local, "global_loss": global_loss, "local_loss": local}

    def extra_repr(self) -> str:
        return f"alignment={self.alignment}, layers={self.layers}, logit_scale={self.logit_scale}"


class AlignmentGraph(ScoringGraph):
    """:class:`ScoringGraph` of the alignment model with fixed text features (a buffer of the graph)."""

    def __init__(self, model: AlignmentModel, text: Tensor) -> None:
        super().__init__(model, **({"chunked": False} if "windows" in model.parts else {}))
        self.register_buffer("text", text)

    def score(self, features: FrozenFeatures) -> Prediction:
        previous, self.model.scoring_text = self.model.scoring_text, self.text
        try:
            return self.model.score(features)
        finally:
            self.model.scoring_text = previous
