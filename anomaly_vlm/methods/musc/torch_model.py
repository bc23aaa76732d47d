"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring of unlabelled images.

Paper: Li, Huang, Xue, Zhou, "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with
Mutual Scoring of the Unlabeled Images", ICLR 2024 (arXiv 2401.16753).

MuSc is *transductive*: no prompt, no training, no reference image. Every test image of a category is
scored against the other test images of the same category, so the method scores a whole set at once
(:meth:`MuSc.score_set`) from per-image frozen features (:meth:`MuSc.frozen_features`).

Where the paper is silent the released code (xrli-U/MuSc) decides, and this module follows it:

* features are the raw residual stream at the output of blocks 6/12/18/24 (1-based; the release's
  config says 5/11/17/23 and adds one), no ``ln_post``; the class token is dropped before aggregation;
* LNAMD: per image and per block a parameter-free LayerNorm over (C, H, W) jointly, then an r x r mean
  per channel with stride 1 whose zero padding counts in the mean, then L2 normalisation per patch;
* MSM: for each patch the smallest Euclidean distance to the patches of every *other* image, then the
  mean of the ``int((N - 1) * 0.3)`` smallest of those N - 1 values (float32; accumulated in float64);
  each pair of images is multiplied once (the release does it twice);
* the patch map is the mean over blocks and over r in {1, 3, 5}, upsampled bilinearly with
  ``align_corners=True`` to the input size, no blur; the image score is the map's maximum;
* RsCIN: the image scores are min-max normalised over the category and smoothed over the
  image-level neighbourhood given by the cosine similarity of the L2-normalised CLIP image embeddings
  (``ln_post(CLS) @ proj``), keeping the k most similar images (the image itself included) for each k
  of a list hard-coded per dataset (VisA [1, 8, 9], others [1, 2, 3]) and averaging over the list;
* a category may be split into ``divide_num`` subsets that are scored independently (memory bound);
  the release deals the images of each defect type round robin after a seeded shuffle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data import DataError
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction
from anomaly_vlm.methods.ops import resolve_stages
from anomaly_vlm.wording import counted

#: Aggregation degrees of LNAMD in the release.
REFERENCE_R_LIST: tuple[int, ...] = (1, 3, 5)
#: RsCIN window lists of the release: VisA uses [1, 8, 9]; MVTec AD, BTAD and anything else [1, 2, 3].
RSCIN_K_VISA: tuple[int, ...] = (1, 8, 9)
RSCIN_K_DEFAULT: tuple[int, ...] = (1, 2, 3)
#: Seed of the release's subset division (its ``musc_main.py`` passes 42 to the datasets).
SUBSET_SEED = 42
#: Name of the image-embedding entry in :meth:`MuSc.frozen_features`.
IMAGE_EMBEDDING = "image_embedding"


def tokens_key(layer: int) -> str:
    """Feature name of block ``layer``'s (1-based) token taps."""
    return f"tokens_{layer}"


class MuScError(DataError):
    """A set of images MuSc cannot score (too few images) or a bad MuSc option: a user error, reported
    by the entry points as one ``error:`` line."""


def lnamd(tokens: Tensor, r: int) -> Tensor:
    """Local neighbourhood aggregation of one block's tokens at degree ``r``.

    Args:
        tokens: ``[B, 1 + N, C]`` raw residual stream (class token first, N a square grid).
        r: odd aggregation degree (1 = no aggregation).

    Returns:
        ``[B, N, C]`` float32 patch features, unit L2 norm per patch.
    """
    if r < 1 or r % 2 == 0:
        raise MuScError(f"LNAMD degree r={r} must be a positive odd number (the grid must keep its size)")
    patches = tokens[:, 1:, :].float()
    batch, count, channels = patches.shape
    side = math.isqrt(count)
    if side * side != count:
        raise MuScError(f"{count} patch tokens do not form a square grid")
    grid = patches.reshape(batch, side, side, channels).permute(0, 3, 1, 2)
    # A fresh LayerNorm (weight 1, bias 0) over the whole (C, H, W) block of each image, as the release.
    grid = F.layer_norm(grid, grid.shape[1:])
    if r > 1:
        # The release unfolds r x r windows with zero padding and averages each channel's r*r values;
        # the padded zeros count, which is avg_pool2d with count_include_pad=True.
        grid = F.avg_pool2d(grid, r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
    features = grid.permute(0, 2, 3, 1).reshape(batch, count, channels)
    return features / features.norm(dim=-1, keepdim=True)


def interval_bounds(
    reference_count: int, topmin_min: float = 0.0, topmin_max: float = 0.3
) -> tuple[int, int]:
    """The release's ``[k_min, k_max)`` window of sorted distances that MSM averages.

    Fractions below 1 scale the number of reference images (truncated); values from 1 up are counts.
    """
    k_max = int(reference_count * topmin_max) if topmin_max < 1 else int(topmin_max)
    k_min = int(reference_count * topmin_min) if topmin_min < 1 else int(topmin_min)
    if k_max < k_min:
        k_max, k_min = k_min, k_max
    return k_min, k_max


def _interval_is_valid(count: int, topmin_min: float, topmin_max: float) -> bool:
    k_min, k_max = interval_bounds(count - 1, topmin_min, topmin_max)
    return count >= 2 and k_max - k_min >= 1 and k_max <= count - 1


def minimum_set_size(topmin_min: float = 0.0, topmin_max: float = 0.3, limit: int = 100_000) -> int:
    """The fewest images for which the averaged interval is not empty (5 for the release's 0 and 0.3)."""
    for count in range(2, limit):
        if _interval_is_valid(count, topmin_min, topmin_max):
            return count
    raise MuScError(f"method.topmin_min={topmin_min}, topmin_max={topmin_max} never average any distance")


def check_set_size(count: int, topmin_min: float = 0.0, topmin_max: float = 0.3) -> None:
    """Raise :class:`MuScError` when mutual scoring over ``count`` images would average nothing."""
    if not _interval_is_valid(count, topmin_min, topmin_max):
        needed = minimum_set_size(topmin_min, topmin_max)
        raise MuScError(
            "MuSc is transductive: it scores each image against the other images of its category, so it "
            f"needs at least {needed} images scored together (per subset with divide_num > 1); "
            f"{_why_too_few(count, topmin_min, topmin_max)}"
        )


def _why_too_few(count: int, topmin_min: float, topmin_max: float) -> str:
    """Why mutual scoring over ``count`` images averages nothing, in the user's terms."""
    if count == 0:
        return "got no image"
    if count == 1:
        return "got 1 image, which has no other image to be scored against"
    others = count - 1
    k_min, k_max = interval_bounds(others, topmin_min, topmin_max)
    if k_max > others:
        return (
            f"got {count} images: method.topmin_max={topmin_max} averages the {k_max} smallest distances of "
            f"a patch to the other images, but each image has only {counted(others, 'other image')}"
        )

    def rank(value: float, k: int) -> str:  # the release truncates fractions of the other images' count
        return f"int({others} × {value}) = {k}" if value < 1 else str(k)

    if k_min == 0:
        averaged = f"the smallest {rank(topmin_max, k_max)} (method.topmin_max={topmin_max})"
    else:
        averaged = (
            f"those ranked {rank(topmin_min, k_min)} to {rank(topmin_max, k_max)} "
            f"(method.topmin_min={topmin_min}, method.topmin_max={topmin_max})"
        )
    return (
        f"got {count} images: of the {counted(others, 'distance')} of a patch to the other images, MSM "
        f"averages {averaged}, which is none"
    )


def _distance_operands(features: Tensor, norms: Tensor, query: bool) -> Tensor:
    """One side of ``torch.cdist``'s matrix-product path for the Euclidean distance (ATen's
    ``_euclidean_dist``): ``[-2a, |a|^2, 1] . [b, 1, |b|^2] = |a - b|^2``, summed inside one product."""
    ones = torch.ones_like(norms)
    if query:
        return torch.cat([features.mul(-2), norms, ones], dim=-1)
    return torch.cat([features, ones, norms], dim=-1)


def mutual_scores(
    features: Tensor,
    topmin_min: float = 0.0,
    topmin_max: float = 0.3,
    block_bytes: int = 256 * 2**20,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Mutual scoring (MSM) of a set of images by each other.

    The release computes, for every image, ``torch.cdist`` to all patches of the other images and the
    minimum over each image's patches, so every pair of images is multiplied twice and every one of the
    ``N (N - 1) L^2`` distances goes through a square root. Here each pair is multiplied once: the block
    of squared distances between images i < j gives the nearest patch of j for each patch of i (its
    row minima) and the nearest patch of i for each patch of j (its column minima). The squared
    distances are the sums of cdist's own matrix-product path; the clamp at 0 and the square root, both
    monotone, are taken after the minimum, on ``N (N - 1) L`` values. Results equal cdist's up to the
    rounding of the order in which a pair's two squared norms are added (below 1e-6 on unit features).

    Args:
        features: ``[N, L, C]`` aggregated patch features of the N images of a set.
        topmin_min, topmin_max: interval of the sorted image-to-image distances that is averaged.
        block_bytes: bound of one distance block; the other images of a pair are processed in chunks
            so that ``L x (chunk * L)`` float32 squared distances stay below it (the result does not
            change).
        dtype: type of the products' operands: None or float32, the release's arithmetic as above; a
            low-precision type (the backbone's ``amp-*`` one), the same sums with the operands rounded
            to it and accumulated in float32 by the product, so the cancellation of
            ``|a|^2 + |b|^2 - 2 a . b`` happens before the squared distance is rounded to that type
            (relative 2^-9 in bfloat16); the square roots and averages stay float32.

    Returns:
        ``[N, L]`` float64 patch anomaly scores.
    """
    count, patches, channels = features.shape
    check_set_size(count, topmin_min, topmin_max)
    k_min, k_max = interval_bounds(count - 1, topmin_min, topmin_max)
    features = features.float()
    dtype = dtype or torch.float32
    chunk = max(1, int(block_bytes // max(1, patches * patches * 4)))
    norms = features.pow(2).sum(dim=-1, keepdim=True)
    # nearest[i, p, j]: smallest squared distance from patch p of image i to the patches of image j; an
    # image's own column stays +inf so that it is never among the smallest.
    nearest = torch.full((count, patches, count), math.inf, dtype=torch.float32, device=features.device)
    # Low-precision products run on tiles of 32 values along the summed axis: zeros pad C + 2 to them.
    width = channels + 2 if dtype == torch.float32 else -(-(channels + 2) // 32) * 32

    def operands(rows: slice | int, query: bool) -> Tensor:
        sides = _distance_operands(features[rows], norms[rows], query)
        return F.pad(sides, (0, width - channels - 2)).to(dtype) if width > channels + 2 else sides.to(dtype)

    for index in range(count - 1):
        query = operands(index, query=True)  # [L, C + 2]
        for start in range(index + 1, count, chunk):
            stop = min(start + chunk, count)
            references = operands(slice(start, stop), query=False)
            squared = (query @ references.reshape(-1, width).T).view(patches, stop - start, patches)
            nearest[index, :, start:stop] = squared.amin(dim=2)
            nearest[start:stop, :, index] = squared.amin(dim=0)
    distances = nearest.clamp_min_(0).sqrt_()
    smallest = torch.topk(distances, k_max, dim=2, largest=False, sorted=True).values
    return smallest[:, :, k_min:k_max].mean(dim=2).double()


def rscin(scores: Tensor, embeddings: Tensor | None, k_list: Sequence[int]) -> Tensor:
    """Re-scoring with a constrained image-level neighbourhood (RsCIN).

    Args:
        scores: ``[N]`` image scores of one category (float64).
        embeddings: ``[N, D]`` L2-normalised image embeddings; None returns ``scores`` unchanged.
        k_list: neighbourhood sizes (each keeps the k most similar images per row, itself included);
            a 0 in the list disables RsCIN, as in the release.

    Returns:
        ``[N]`` re-scored image scores (float32, as the release computes them).
    """
    k_list = [int(k) for k in k_list]
    if embeddings is None or 0 in k_list:
        return scores
    count = int(scores.shape[0])
    too_large = [k for k in k_list if k > count]
    if too_large or any(k < 0 for k in k_list):
        raise MuScError(
            f"RsCIN window sizes {k_list} need 0 <= k <= the number of images of the category ({count}); "
            "set method.rscin_k to smaller values or 0 to disable RsCIN"
        )
    scores = scores.double()
    span = scores.max() - scores.min()
    # The release divides by the span unguarded (NaN when all scores are equal); equal scores stay 0.
    normalised = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
    similarity = (embeddings.float() @ embeddings.float().T).float()
    normalised = normalised.float()
    smoothed = []
    for k in k_list:
        # The release zeroes the N - k least similar entries of each row (topk smallest), keeping k.
        dropped = torch.topk(similarity, count - k, dim=1, largest=False, sorted=True).indices
        weights = similarity.clone().scatter_(1, dropped, 0.0)
        inverse_degree = 1.0 / weights.sum(dim=1, keepdim=True)
        smoothed.append((weights * inverse_degree) @ normalised.unsqueeze(-1))
    return torch.cat(smoothed, dim=-1).mean(dim=-1)


def divide_subsets(
    groups: Sequence[str] | None, count: int, divide_num: int, seed: int = SUBSET_SEED
) -> list[list[int]]:
    """Split ``count`` images into ``divide_num`` subsets the way the release does.

    Images are grouped by ``groups`` (the defect type, ``good`` for normal images; sorted by name, in
    input order within a group), each group is shuffled by one seeded generator in turn, cut into runs
    of ``divide_num``, and subset d takes the d-th image of every run.

    Returns:
        Index lists into the input, one per non-empty subset.
    """
    if divide_num < 1:
        raise MuScError(f"method.divide_num={divide_num} must be at least 1")
    if divide_num == 1:
        return [list(range(count))]
    labels = list(groups) if groups is not None else ["all"] * count
    if len(labels) != count:
        raise MuScError(f"{len(labels)} group labels for {count} images")
    by_group: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_group.setdefault(label, []).append(index)
    generator = random.Random(seed)
    shuffled = {}
    for label in sorted(by_group):
        indices = list(by_group[label])
        generator.shuffle(indices)
        shuffled[label] = indices
    subsets = []
    for part in range(divide_num):
        subset = [
            indices[i + part]
            for label, indices in shuffled.items()
            for i in range(0, len(indices), divide_num)
            if i + part < len(indices)
        ]
        if subset:
            subsets.append(subset)
    return subsets


class MuSc(nn.Module):
    """Frozen CLIP + LNAMD + MSM + RsCIN, scoring a whole category at once.

    Paper: Li et al., ICLR 2024 (MuSc); arithmetic as in the xrli-U/MuSc release.

    Args:
        backbone: frozen CLIP (published: OpenAI ViT-L-14-336, plain GELU, 518 px).
        layers: 1-based blocks to tap; None scales the published 6/12/18/24 to the backbone depth.
        r_list: LNAMD aggregation degrees (odd).
        topmin_min, topmin_max: interval of the sorted image-to-image distances averaged by MSM.
        rscin_k: RsCIN neighbourhood sizes; empty or containing 0 disables RsCIN.
        divide_num: number of subsets a category is split into before mutual scoring.
        subset_seed: seed of the subset division.
        block_bytes: memory bound of one distance block in MSM (result unchanged).
        low_precision_msm: in the backbone's ``amp-*`` modes, mutual scoring's products in its low type
            (:attr:`msm_dtype`; off by default).
    """

    cacheable = True
    #: Scores a whole category at once (:meth:`score_set`), never one image on its own.
    transductive = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        layers: Sequence[int] | None = None,
        r_list: Sequence[int] = REFERENCE_R_LIST,
        topmin_min: float = 0.0,
        topmin_max: float = 0.3,
        rscin_k: Sequence[int] = RSCIN_K_DEFAULT,
        divide_num: int = 1,
        subset_seed: int = SUBSET_SEED,
        block_bytes: int = 256 * 2**20,
        low_precision_msm: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = resolve_stages(layers, backbone, key="method.layers")
        self.r_list = tuple(int(r) for r in r_list)
        if not self.r_list:
            raise MuScError("method.r_list is empty; the release uses [1, 3, 5]")
        for r in self.r_list:
            if r < 1 or r % 2 == 0:
                raise MuScError(
                    f"method.r_list={list(self.r_list)}: degree {r} must be a positive odd number"
                )
        self.topmin_min = float(topmin_min)
        self.topmin_max = float(topmin_max)
        self.rscin_k = tuple(int(k) for k in rscin_k)
        if int(divide_num) < 1:
            raise MuScError(f"method.divide_num={divide_num} must be at least 1")
        self.divide_num = int(divide_num)
        self.subset_seed = int(subset_seed)
        self.block_bytes = int(block_bytes)
        self.low_precision_msm = bool(low_precision_msm)

    # ----- frozen half --------------------------------------------------------------------------
    def feature_spec(self) -> dict[str, Any]:
        """What besides backbone, preprocessing and image determines :meth:`frozen_features`."""
        return {"kind": "residual_taps+image_embedding", "layers": list(self.layers)}

    @torch.no_grad()
    def frozen_features(self, images: Tensor) -> FrozenFeatures:
        """Per-image features: each tapped block's raw tokens (class token included) and the image
        embedding ``ln_post(CLS) @ proj`` that RsCIN compares images with.

        Args:
            images: ``[B, 3, H, W]`` RGB in ``[0, 1]`` at the backbone's input size.
        """
        tokens = self.backbone.embed_patches(images)
        final, taps = self.backbone.run_blocks(tokens, self.layers)
        features = {tokens_key(layer): taps[layer] for layer in self.layers}
        features[IMAGE_EMBEDDING] = self.backbone.pool(final)
        return features

    # ----- set-level scoring --------------------------------------------------------------------
    def aggregate(
        self, tokens: Tensor, r: int, device: torch.device, index: Tensor | None = None, batch_size: int = 16
    ) -> Tensor:
        """LNAMD of one block's tokens for a set (rows ``index`` of ``tokens``, default all), a few
        images at a time: each image is aggregated on its own, so only the output is set-sized."""
        index = torch.arange(tokens.shape[0]) if index is None else index
        count, length, channels = len(index), tokens.shape[1], tokens.shape[2]
        aggregated = torch.empty(count, length - 1, channels, dtype=torch.float32, device=device)
        for start in range(0, count, batch_size):
            rows = index[start : start + batch_size].to(tokens.device)
            aggregated[start : start + batch_size] = lnamd(tokens[rows].to(device), r)
        return aggregated

    def patch_scores(
        self, features: Mapping[str, Tensor], index: Tensor | None = None, parts: dict | None = None
    ) -> Tensor:
        """``[N, L]`` float64 mean over blocks and degrees of MSM scores for one set of images.

        Args:
            features: frozen features (on any device; moved to the backbone's a few images at a time).
            index: the rows of ``features`` that form the set (default all).
            parts: when a dict, receives ``(r, layer) -> [N, L]`` per-block, per-degree scores.
        """
        device = self.backbone.proj.device
        count = int(features[tokens_key(self.layers[0])].shape[0]) if index is None else len(index)
        check_set_size(count, self.topmin_min, self.topmin_max)
        per_degree = []
        for r in self.r_list:
            per_layer = []
            # One block at a time: only one [N, L, C] aggregated tensor is alive at any moment.
            for layer in self.layers:
                aggregated = self.aggregate(features[tokens_key(layer)], r, device, index)
                layer_scores = mutual_scores(
                    aggregated, self.topmin_min, self.topmin_max, self.block_bytes, self.msm_dtype
                )
                del aggregated
                if parts is not None:
                    parts[(r, layer)] = layer_scores.cpu()
                per_layer.append(layer_scores)
            per_degree.append(torch.stack(per_layer).mean(dim=0))
        return torch.stack(per_degree).mean(dim=0)

    @property
    def msm_dtype(self) -> torch.dtype | None:
        """Operand type of mutual scoring: None (float32, the release's arithmetic) unless built with
        ``low_precision_msm=True`` on a backbone in a mixed ``amp-*`` mode, then the backbone's low type.

        Off by default: on photographs the low-precision products moved the maps of the tiny CLIP to
        Spearman 0.93 against fp32 (0.9997 with float32 mutual scoring), since the nearest distances of
        normal patches are small and the rounding of their squared values is not.
        """
        mixed = getattr(self.backbone, "mixed_precision", False)
        return self.backbone.compute_dtype if self.low_precision_msm and mixed else None

    def upsample(self, patch_scores: Tensor, size: tuple[int, int]) -> Tensor:
        """``[N, L]`` patch scores -> ``[N, H, W]`` maps (bilinear, ``align_corners=True``, float64)."""
        side = math.isqrt(patch_scores.shape[1])
        grid = patch_scores.reshape(-1, 1, side, side)
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=True)[:, 0]

    @torch.no_grad()
    def score_set(
        self,
        features: Mapping[str, Tensor],
        groups: Sequence[str] | None = None,
        size: tuple[int, int] | None = None,
        details: dict | None = None,
    ) -> Prediction:
        """Score all images of one category against each other.

        Args:
            features: :meth:`frozen_features` of every test image of the category (batch axis first).
            groups: per-image defect type, used only to divide the set into subsets like the release.
            size: output map size; default the backbone input size.
            details: when a dict, receives ``parts`` ((r, layer) -> [N, L] scores, subset-local rows
                scattered back to input order), ``raw_image_score`` (before RsCIN) and ``maps64``.

        Returns:
            Image scores after RsCIN and ``[N, H, W]`` float32 maps, in input order.
        """
        size = tuple(size or (self.backbone.image_size, self.backbone.image_size))
        count = int(features[tokens_key(self.layers[0])].shape[0])
        subsets = divide_subsets(groups, count, self.divide_num, self.subset_seed)
        for subset in subsets:
            check_set_size(len(subset), self.topmin_min, self.topmin_max)
        maps = torch.empty(count, *size, dtype=torch.float64)
        parts_all: dict = {}
        for subset in subsets:
            index = torch.tensor(subset)
            parts: dict | None = {} if details is not None else None
            patch = self.patch_scores(features, index, parts)
            maps[index] = self.upsample(patch, size).cpu()
            if parts is not None:
                for key, value in parts.items():
                    parts_all.setdefault(key, torch.empty(count, value.shape[1], dtype=value.dtype))[
                        index
                    ] = value
        raw_scores = maps.flatten(1).amax(dim=1)
        embeddings = features.get(IMAGE_EMBEDDING)
        if embeddings is not None:
            embeddings = embeddings.float().cpu()
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        scores = rscin(raw_scores, embeddings, self.rscin_k) if self.rscin_k else raw_scores
        if details is not None:
            details.update(parts=parts_all, raw_image_score=raw_scores, maps64=maps)
        return Prediction(image_score=scores.float(), anomaly_map=maps.float())
