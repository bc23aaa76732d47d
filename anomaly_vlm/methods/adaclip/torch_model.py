"""AdaCLIP: hybrid (static + dynamic) learnable prompts in both CLIP encoders (pure torch).

Paper: Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection",
ECCV 2024. Where the paper and the official code (caoyunkang/AdaCLIP) differ, this follows the code, which
produced the published numbers; each such point is stated where it is implemented.

Forward pass of one image (``method/adaclip.py`` of the official code):

1. Frozen CLIP, no prompts: the pooled image embedding ``g = ln_post(CLS) @ proj``.
2. Dynamic prompts: ``n`` linear maps of ``g`` give ``n`` visual tokens and ``n`` text tokens per image.
3. Visual prompts: block 1 gets ``static_1 + dynamic`` appended after the patch tokens; blocks
   ``2 .. depth`` replace them with ``static_i + dynamic``. Tapped patch tokens (raw residual stream at
   the taps, prompts and CLS removed) go through one trained ``Linear(width -> embed_dim)`` per tap and
   are L2-normalised; the pooled CLS goes through a trained ``Linear(embed_dim -> embed_dim)``.
4. Text prompts: in text blocks ``2 .. depth`` token positions ``1 .. n`` of every sentence are replaced
   by ``static_i + dynamic`` (the block-1 static prompt exists but is never used, as in the code). Text
   features are the class-aware prompt ensemble (states x templates), each sentence L2-normalised,
   averaged per state, re-normalised.
5. Maps: per tap ``100 * patch @ text`` on the grid, bilinear (``align_corners=True``) to the input size.
   Training: softmax per tap. Test: mean of the tap logits, softmax, anomalous channel, Gaussian blur.
6. Hybrid semantic fusion (HSF, the code's "upgraded" version, not the paper's): the ``5 k`` patches with
   the highest anomalous probability (mean tap logits, grid level), KMeans with ``k = 20`` on their tap
   tokens concatenated, each cluster's mean token over its members and all taps, the mean of the ``k``
   cluster centres, L2-normalised; the image embedding is ``L2(0.2 * hsf + 0.8 * cls)``; the image score is
   ``softmax(100 * embedding @ text)[anomalous]``.

Steps 2-4 (the prompts) are the shared :class:`~anomaly_vlm.methods.hybrid_prompts.HybridPrompts`, the tap
projections the shared :class:`~anomaly_vlm.methods.projections.TapProjections`, so other compositions (the
alignment analysis's ``alignment=adaclip``) use the very same parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction
from anomaly_vlm.methods.hybrid_prompts import CategoryText, HybridPrompts
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.methods.ops import gaussian_blur
from anomaly_vlm.methods.projections import TapProjections

DICE_UNITS = ("row", "image")


def default_layers(num_layers: int) -> list[int]:
    """The official taps: quarters of the depth (``substage = layers // 4``), 6/12/18/24 for ViT-L."""
    quarter = num_layers // 4
    if quarter < 1:
        raise ValueError(f"a backbone of {num_layers} blocks has no quarter taps; set method.layers")
    return [quarter, 2 * quarter, 3 * quarter, 4 * quarter]


class AdaCLIP(HybridPrompts):
    """Frozen CLIP with hybrid learnable prompts, trained projections and hybrid semantic fusion.

    The prompts' parameters and token builders are those of
    :class:`~anomaly_vlm.methods.hybrid_prompts.HybridPrompts` (kept at this module's top level, so the
    state dict names them ``visual_static``, ``text_generator.<i>``, ... as the release mapping does).

    Args:
        backbone: frozen CLIP (published: OpenAI ViT-L-14-336, plain GELU, 518 px, positional embedding
            resized bicubic without antialias).
        layers: taps (1-based blocks); None = the official quarters of the depth (6/12/18/24).
        prompt_length: learnable tokens per prompted block, ``--prompting_length`` (5).
        prompt_depth: prompted blocks, ``--prompting_depth`` (4): visual blocks 1..4, text blocks 2..4.
        static_prompts, dynamic_prompts: the ``S`` and ``D`` of ``--prompting_type SD``; at least one.
        visual_prompts, text_prompts: the ``V`` and ``L`` of ``--prompting_branch VL``.
        use_hsf: hybrid semantic fusion for the image embedding (False: the projected CLS alone).
        k_clusters: KMeans clusters of HSF (20); ``5 * k_clusters`` patches are clustered.
        hsf_alpha: weight of the HSF centre in the image embedding (0.2).
        kmeans_seed: seed of KMeans. The official KMeans is unseeded (its image scores vary between
            runs); a seed makes them reproducible; None restores the unseeded behaviour.
        logit_scale: scale of the cosine similarities (100).
        prompt_fp16: round the prompt tokens through float16 where they enter the encoders, as the
            official ``.half()`` casts do (the gradient reaching them is rounded the same way).
        dice_unit: ``row``: the dice loss treats each image row as a sample, which is what the official
            code computes with its batch size of one (``gt.squeeze()`` drops the batch axis, and its dice
            loss reads the first axis as the batch); ``image``: one dice per image.
        init_std: standard deviation of the normal initialisation of the static prompts (0.02).
        blur_sigma, blur_truncate: Gaussian blur of the test maps (SciPy ``gaussian_filter(sigma=4)``).
    """

    #: The image features pass through learned visual prompts, so nothing image-side is fixed to cache.
    cacheable = False

    def __init__(
        self,
        backbone: FrozenCLIP,
        layers: Sequence[int] | None = None,
        prompt_length: int = 5,
        prompt_depth: int = 4,
        static_prompts: bool = True,
        dynamic_prompts: bool = True,
        visual_prompts: bool = True,
        text_prompts: bool = True,
        use_hsf: bool = True,
        k_clusters: int = 20,
        hsf_alpha: float = 0.2,
        kmeans_seed: int | None = 0,
        logit_scale: float = 100.0,
        prompt_fp16: bool = True,
        dice_unit: str = "row",
        init_std: float = 0.02,
        blur_sigma: float = 4.0,
        blur_truncate: float = 4.0,
    ) -> None:
        try:
            chosen = default_layers(backbone.num_layers) if layers is None else list(layers)
            taps = backbone.check_layers(chosen)
        except ValueError as error:
            raise ValueError(f"method.layers: {error}") from None
        if not taps:
            raise ValueError("method.layers is empty; AdaCLIP needs at least one tap (e.g. [6, 12, 18, 24])")
        if int(prompt_length) < 1:
            raise ValueError(f"method.prompt_length={prompt_length} must be at least 1")
        depth = int(prompt_depth)
        limit = min(backbone.num_layers, backbone.text_num_layers)
        if (visual_prompts or text_prompts) and not 1 <= depth <= limit:
            raise ValueError(
                f"method.prompt_depth={prompt_depth} outside 1..{limit} (blocks of the smaller encoder of "
                f"'{backbone.model_name}')"
            )
        if (visual_prompts or text_prompts) and not (static_prompts or dynamic_prompts):
            raise ValueError("method: static_prompts and dynamic_prompts are both false; enable one")
        if dice_unit not in DICE_UNITS:
            raise ValueError(f"method.dice_unit={dice_unit!r} is not one of {list(DICE_UNITS)}")
        if use_hsf and int(k_clusters) < 1:
            raise ValueError(f"method.k_clusters={k_clusters} must be at least 1")
        super().__init__(
            backbone.width,
            backbone.text_width,
            backbone.embed_dim,
            prompt_length=int(prompt_length),
            prompt_depth=depth,
            static_prompts=static_prompts,
            dynamic_prompts=dynamic_prompts,
            visual_prompts=visual_prompts,
            text_prompts=text_prompts,
            prompt_fp16=prompt_fp16,
            init_std=init_std,
        )
        self.backbone = backbone
        self.layers = taps
        self.use_hsf = bool(use_hsf)
        self.k_clusters = int(k_clusters)
        self.hsf_alpha = float(hsf_alpha)
        self.kmeans_seed = None if kmeans_seed is None else int(kmeans_seed)
        self.logit_scale = float(logit_scale)
        self.dice_unit = dice_unit
        self.blur_sigma = float(blur_sigma)
        self.blur_truncate = float(blur_truncate)
        embed = backbone.embed_dim
        self.patch_projections = TapProjections(backbone.width, embed, len(self.layers))
        self.cls_projection = nn.Linear(embed, embed)
        #: The prompt ensemble that scores test images (:meth:`set_category`): token ids ``[S, L]`` and
        #: the number of normal sentences, kept as tensors so that a saved detector carries them.
        self.category_token_ids: Tensor | None = None
        self.category_normal_count: Tensor | None = None

    # ----- frozen features ------------------------------------------------------------------------
    def feature_spec(self) -> dict[str, Any]:
        return {"method": "adaclip", "inputs": "pixels + prompt-free pooled embedding"}

    @torch.no_grad()
    def frozen_features(self, images: Tensor) -> FrozenFeatures:
        """What does not depend on anything learned: the normalised pixels (the prompted image pass
        starts from them) and the prompt-free pooled embedding the dynamic prompts are generated from."""
        pixels = self.backbone.normalize(images)
        pooled = self.backbone.encode_image(pixels, normalized=True).global_embedding
        return {"pixels": pixels, "global_embedding": pooled}

    # ----- encoders -------------------------------------------------------------------------------
    def encode_image(self, features: FrozenFeatures) -> tuple[Tensor, list[Tensor]]:
        """Unit-norm ``[B, D]`` projected CLS and per tap unit-norm ``[B, N, D]`` projected patches."""
        pixels, pooled = features["pixels"], features["global_embedding"]
        encoded = self.encode_prompted_image(self.backbone, pixels, pooled, self.layers)
        cls = F.normalize(self.cls_projection(encoded.global_embedding), dim=-1)
        patches = [
            F.normalize(projection(encoded.layer_tokens[index][:, 1:]), dim=-1)
            for projection, index in zip(self.patch_projections, self.layers, strict=True)
        ]
        return cls, patches

    def encode_text(self, text: CategoryText, pooled: Tensor) -> Tensor:
        """``[B, 2, D]`` unit text features (normal, anomalous) of one category for each image."""
        return self.encode_prompted_text(self.backbone, text, pooled)

    # ----- scoring pieces ---------------------------------------------------------------------------
    def tap_logits(self, patches: list[Tensor], text: Tensor) -> list[Tensor]:
        """Per tap ``[B, N, 2]`` scaled cosine similarities of patches and text."""
        return [self.logit_scale * torch.einsum("bnd,bcd->bnc", tokens, text) for tokens in patches]

    def _grid_to_image(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        side_h, side_w = self.backbone.grid_size
        grid = logits.transpose(1, 2).reshape(logits.shape[0], 2, side_h, side_w)
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=True)

    def hybrid_semantic_fusion(self, patches: list[Tensor], logits: list[Tensor]) -> Tensor:
        """``[B, D]`` unit HSF centre (see the module docstring).

        Differentiable with respect to the tokens (the cluster assignment is not). A cluster KMeans
        leaves empty (only possible with fewer distinct tokens than clusters) is skipped; the official
        code would average a NaN into the centre.
        """
        from sklearn.cluster import KMeans

        probabilities = torch.stack(logits, dim=1).mean(dim=1).softmax(dim=-1)[..., 1]  # [B, N]
        count = min(probabilities.shape[1], 5 * self.k_clusters)
        top = probabilities.topk(count, dim=1).indices
        selected = [
            tokens.gather(1, top.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])) for tokens in patches
        ]
        joined = torch.cat(selected, dim=-1).detach().float().cpu().numpy()
        # A grid with fewer patches than clusters (tiny inputs only) gets one cluster per patch.
        k = min(self.k_clusters, count)
        centres = []
        for index in range(len(top)):
            clusters = KMeans(n_clusters=k, n_init="auto", random_state=self.kmeans_seed)
            labels = torch.from_numpy(np.asarray(clusters.fit_predict(joined[index]))).to(top.device)
            members = F.one_hot(labels.long(), k).to(selected[0].dtype)  # [count, k]
            sizes = members.sum(dim=0)
            mean_over_taps = torch.stack([tokens[index] for tokens in selected]).mean(dim=0)  # [count, D]
            per_cluster = (members.T @ mean_over_taps)[sizes > 0] / sizes[sizes > 0].unsqueeze(1)
            centres.append(per_cluster.mean(dim=0))
        return F.normalize(torch.stack(centres), dim=-1)

    def image_probabilities(
        self, cls: Tensor, patches: list[Tensor], logits: list[Tensor], text: Tensor
    ) -> Tensor:
        """``[B, 2]`` softmax of the (HSF-fused) image embedding against the text."""
        embedding = cls
        if self.use_hsf:
            fused = self.hsf_alpha * self.hybrid_semantic_fusion(patches, logits) + (1 - self.hsf_alpha) * cls
            embedding = F.normalize(fused, dim=-1)
        return (self.logit_scale * torch.einsum("bd,bcd->bc", embedding, text)).softmax(dim=-1)

    def _forward(self, features: FrozenFeatures, texts: Sequence[CategoryText]) -> tuple:
        """Image side once, text side per category; ``texts[i]`` is the category text of image ``i``."""
        cls, patches = self.encode_image(features)
        pooled = features["global_embedding"]
        groups: dict[int, list[int]] = {}
        for index, item in enumerate(texts):
            groups.setdefault(id(item), []).append(index)
        rows: list[Tensor | None] = [None] * len(texts)
        for indices in groups.values():
            encoded = self.encode_text(texts[indices[0]], pooled[indices])
            for position, index in enumerate(indices):
                rows[index] = encoded[position]
        text = torch.stack(rows)
        logits = self.tap_logits(patches, text)
        return cls, patches, logits, text

    # ----- test -----------------------------------------------------------------------------------
    def set_category(self, text: CategoryText | None) -> None:
        """Score the following images with ``text`` (the category's prompt ensemble); None forgets it."""
        self.category_token_ids = None if text is None else text.token_ids
        self.category_normal_count = None if text is None else torch.tensor(text.num_normal)

    @property
    def category_text(self) -> CategoryText | None:
        if self.category_token_ids is None or self.category_normal_count is None:
            return None
        return CategoryText(self.category_token_ids, int(self.category_normal_count))

    @torch.no_grad()
    def score(self, features: FrozenFeatures) -> Prediction:
        """Image score = HSF-fused text probability; map = softmax of the mean tap logits, anomalous
        channel, blurred. (The official ``(p_anomalous + 1 - p_normal) / 2`` is ``p_anomalous``.)"""
        category = self.category_text
        if category is None:
            raise RuntimeError("AdaCLIP.score needs set_category() first (the prompts name the category)")
        cls, patches, logits, text = self._forward(features, [category] * len(features["pixels"]))
        scores = self.image_probabilities(cls, patches, logits, text)[:, 1]
        size = (self.backbone.image_size, self.backbone.image_size)
        mean_logits = torch.stack(logits, dim=1).mean(dim=1)
        maps = self._grid_to_image(mean_logits, size).softmax(dim=1)[:, 1]
        return Prediction(scores, gaussian_blur(maps, self.blur_sigma, self.blur_truncate))

    def forward(self, images: Tensor) -> Prediction:
        return self.score(self.frozen_features(images))

    # ----- training -------------------------------------------------------------------------------
    def loss(
        self, features: FrozenFeatures, masks: Tensor, labels: Tensor, texts: Sequence[CategoryText]
    ) -> dict[str, Tensor]:
        """The official loss: focal(image probabilities, label) + Σ_taps [focal + dice(anomalous, gt) +
        dice(normal, 1 - gt)] on each tap's softmax at the input size."""
        cls, patches, logits, text = self._forward(features, texts)
        image_probabilities = self.image_probabilities(cls, patches, logits, text)
        labels = (labels > 0.5).long()
        image_loss = focal_loss(image_probabilities[:, :, None, None], labels[:, None, None])
        target = (masks > 0.5).to(cls.dtype)
        size = tuple(masks.shape[-2:])
        segmentation = cls.new_zeros(())
        for tap in logits:
            probabilities = self._grid_to_image(tap, size).softmax(dim=1)
            segmentation = segmentation + focal_loss(probabilities, target)
            segmentation = segmentation + self._dice(probabilities[:, 1], target)
            segmentation = segmentation + self._dice(probabilities[:, 0], 1.0 - target)
        total = image_loss + segmentation
        return {"loss": total, "image_loss": image_loss, "segmentation_loss": segmentation}

    def _dice(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.dice_unit == "row":
            return dice_loss(
                prediction.reshape(-1, prediction.shape[-1]), target.reshape(-1, target.shape[-1])
            )
        return dice_loss(prediction, target)

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, prompt_length={self.prompt_length}, prompt_depth={self.prompt_depth}, "
            f"static={self.static_prompts}, dynamic={self.dynamic_prompts}, visual={self.visual_prompts}, "
            f"text={self.text_prompts}, hsf={self.use_hsf} (k={self.k_clusters})"
        )


__all__ = ["AdaCLIP", "CategoryText", "default_layers"]
