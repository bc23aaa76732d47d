"""AnomalyDINO: few-shot patch nearest-neighbour anomaly detection on DINOv2 features, training-free.

Paper: Damm, Laszkiewicz, Lederer, Fischer, "AnomalyDINO: Boosting Patch-based Few-shot Anomaly
Detection with DINOv2", WACV 2025 (arXiv 2405.14529).

Written from the official code (``dammsi/AnomalyDINO``), not the paper's prose:

* features: the last block's patch tokens after the final LayerNorm (``get_intermediate_layers``);
* references: each normal image, and with rotation its 7 copies turned by 45° steps (cv2
  ``getRotationMatrix2D`` about ``(w/2, h/2)``, ``warpAffine`` bilinear, reflect-101 border, on the uint8
  image at the file's resolution, then resized), all patches kept (references are masked only with
  ``mask_references``);
* a test image's background mask: PC1 of a PCA of its own patches ``> 10``, the sign flipped when the
  central 60 % of the grid is at most 35 % foreground, then a 3x3 dilation and closing. The official code
  runs the morphology on the ``[N, 1]`` column of patches, i.e. along raster order (``morphology: 1d``,
  the default, as published); ``2d`` runs it on the patch grid;
* patch distance: ``1 - cos`` to the nearest reference patch (faiss ``IndexFlatL2`` on L2-normalised
  features, halved; ``knn="faiss"``, the default, runs that very search, ``knn="torch"`` the same
  exhaustive search by matrix products); background patches get 0;
* image score: the mean of the top ``int(0.01 N)`` patch distances of the grid (background zeros
  included), the maximum when that count is 0;
* map: the grid resized bilinearly (half-pixel, no antialias) to the image, then a Gaussian blur of
  sigma 4 (scipy's ``gaussian_filter``, reflect, truncate 4); asked for maps at the files' resolution
  (``score(map_size=...)``), resized and blurred at that resolution, as the official code does;
* grid: the input's own ``h x w`` patch grid: a non-square input (the aspect-preserving data geometry)
  gives a non-square grid, carried in the features as ``patch_grid``.

The batched zero-shot mode (``shots=0``, the official ``run_anomalydino_batched.py``) is transductive:
each test image's patches are scored against all patches of the category's other test images by the
mean of the cosine distances strictly below their ``int(0.001 R)``-th smallest, the image score is the
mean of the top 1 % with no maximum fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.data import DataError
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.ops import gaussian_blur

#: The official angles of the rotation augmentation (degrees, counter-clockwise as cv2 turns them).
ROTATION_ANGLES: tuple[int, ...] = (0, 45, 90, 135, 180, 225, 270, 315)
PREPROCESS_CHOICES = (
    "agnostic",
    "informed",
    "masking_only",
    "informed_no_mask",
    "agnostic_no_mask",
    "force_no_mask_no_rotation",
    "force_mask_no_rotation",
    "force_no_mask_rotation",
    "force_mask_rotation",
)
#: The official per-category masking of MVTec AD under agnostic / informed / masking_only (src/utils.py).
MVTEC_MASKED = frozenset({"capsule", "hazelnut", "pill", "screw", "toothbrush"})
#: MVTec AD categories the official ``informed`` preprocessing rotates.
MVTEC_INFORMED_ROTATED = frozenset({"hazelnut", "screw"})
MORPHOLOGIES = ("1d", "2d")
MASK_THRESHOLD = 10.0
#: The nearest-neighbour search: faiss-cpu's exhaustive ``IndexFlatL2`` (the official library, the faster
#: one on a CPU) or torch matrix products (on the features' device, and in exported graphs).
KNN_LIBRARIES = ("faiss", "torch")


class AnomalyDINOError(DataError):
    """A set of images or an option AnomalyDINO cannot score with: a user error, reported by the entry
    points as one ``error:`` line."""


def preprocess_table(dataset: str | None, category: str, preprocess: str) -> tuple[bool, bool]:
    """``(masking, rotation)`` of a category as the official ``get_dataset_info`` sets them.

    ``dataset``: the data source's ``_target_`` or class name. MVTec AD and VisA follow the official
    tables; any other dataset has no table there: masking off, rotation on under ``agnostic`` only (the
    ``force_*`` settings apply everywhere).
    """
    if preprocess not in PREPROCESS_CHOICES:
        raise AnomalyDINOError(f"method.preprocess={preprocess!r} is not one of {list(PREPROCESS_CHOICES)}")
    if preprocess.startswith("force_"):
        return "_no_mask" not in preprocess, not preprocess.endswith("no_rotation")
    name = (dataset or "").rsplit(".", 1)[-1]
    no_mask = preprocess.endswith("_no_mask")
    if name == "MVTecAD":
        masking = category in MVTEC_MASKED and not no_mask
        if preprocess.startswith("informed"):
            return masking, category in MVTEC_INFORMED_ROTATED
        return masking, preprocess.startswith("agnostic")
    if name == "VisA":
        return not no_mask, preprocess.startswith("agnostic")
    return False, preprocess.startswith("agnostic")


def rotate_references(
    images: Tensor,
    angles: tuple[int, ...] = ROTATION_ANGLES,
    size: int | None = None,
    geometry: str = "squash",
    multiple: int = 1,
) -> Tensor:
    """The official rotation augmentation of ``[B, 3, H, W]`` images in ``[0, 1]``: ``[B * len(angles), 3,
    H, W]``, each image's copies in angle order.

    Runs cv2's own ``warpAffine`` on the 8-bit image (its fixed-point bilinear kernel), as the official code
    does; the loaded images are 8-bit values divided by 255, so the round trip is exact. ``size``: each
    turned copy is then resized to ``size x size`` as the data loader resizes a file
    (:func:`~anomaly_vlm.data.image_io.resize_image`; ``geometry="shorter_side"``: the shorter side to
    ``size``, cropped to ``multiple``), the official order (turn the file's pixels, then resize); the
    0-degree copy is then exactly the loader's image of the file.
    """
    import cv2

    from anomaly_vlm.data.image_io import resize_image

    out = []
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    for image in pixels.permute(0, 2, 3, 1).numpy():
        height, width = image.shape[:2]
        center = (width / 2, height / 2)
        for angle in angles:
            matrix = cv2.getRotationMatrix2D(center, angle, 1.0)
            turned = cv2.warpAffine(
                np.ascontiguousarray(image),
                matrix,
                (width, height),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_DEFAULT,
            )
            copy = torch.from_numpy(turned).permute(2, 0, 1).float() / 255
            out.append(copy if size is None else resize_image(copy, size, geometry, multiple))
    return torch.stack(out).to(device=images.device, dtype=images.dtype)


def first_principal_component(features: Tensor) -> Tensor:
    """``[B, N]`` projections of each image's ``[N, D]`` patches on their own first principal axis.

    scikit-learn's PCA as the official code calls it, with an exact solver: centred data, the leading right
    singular vector, its sign chosen so its largest-magnitude entry is positive (``svd_flip`` with
    ``u_based_decision=False``). Computed in float64 from the covariance (``D x D``), then cast back.
    """
    x = features.double()
    centred = x - x.mean(dim=1, keepdim=True)
    covariance = centred.transpose(1, 2) @ centred
    _, vectors = torch.linalg.eigh(covariance)
    axis = vectors[..., -1]  # [B, D], the largest eigenvalue's vector
    largest = axis.abs().argmax(dim=1, keepdim=True)
    axis = axis * torch.sign(axis.gather(1, largest))
    return (centred @ axis.unsqueeze(-1)).squeeze(-1).to(features.dtype)


def _dilate(mask: Tensor, dims: int) -> Tensor:
    pool = F.max_pool1d if dims == 1 else F.max_pool2d
    return pool(mask, kernel_size=3, stride=1, padding=1)


def _erode(mask: Tensor, dims: int) -> Tensor:
    return -_dilate(-mask, dims)


def background_mask(
    features: Tensor,
    grid: tuple[int, int],
    threshold: float = MASK_THRESHOLD,
    morphology: str = "1d",
    border: float = 0.2,
) -> Tensor:
    """``[B, N]`` foreground mask of each image from its own ``[N, D]`` patch features.

    ``morphology``: ``1d`` (the official code: 3x3 dilation then closing of the ``[N, 1]`` column, which
    acts along raster order and wraps across rows) or ``2d`` (the same operations on the patch grid).
    cv2 ignores the border in both (max-pool and min-pool padding do the same).
    """
    if morphology not in MORPHOLOGIES:
        raise AnomalyDINOError(f"method.morphology={morphology!r} is not one of {list(MORPHOLOGIES)}")
    first = first_principal_component(features)
    mask = first > threshold
    height, width = grid
    rows = slice(int(height * border), int(height * (1 - border)))
    cols = slice(int(width * border), int(width * (1 - border)))
    centre = mask.view(-1, height, width)[:, rows, cols]
    centre_size = centre.shape[1] * centre.shape[2]
    flip = centre.flatten(1).sum(dim=1) <= centre_size * 0.35
    mask = torch.where(flip.unsqueeze(1), -first > threshold, mask)
    return dilate_and_close(mask, grid, morphology)


def dilate_and_close(mask: Tensor, grid: tuple[int, int], morphology: str = "1d") -> Tensor:
    """``[B, N]`` masks after cv2's 3x3 ``dilate`` and then ``MORPH_CLOSE``, as the official code runs them.

    ``1d``: on the ``[N, 1]`` column of patches in raster order (the official code: a patch's neighbours
    are the previous and next in raster order, wrapping across rows); ``2d``: on the ``[h, w]`` grid.
    """
    if morphology not in MORPHOLOGIES:
        raise AnomalyDINOError(f"method.morphology={morphology!r} is not one of {list(MORPHOLOGIES)}")
    values = mask.float()
    if morphology == "1d":
        column = values.unsqueeze(1)  # [B, 1, N]: the (N, 1) column along its length
        closed = _erode(_dilate(_dilate(column, 1), 1), 1)
        return closed.squeeze(1) > 0.5
    grid_mask = values.view(-1, 1, *grid)
    closed = _erode(_dilate(_dilate(grid_mask, 2), 2), 2)
    return closed.flatten(1) > 0.5


def mean_top_percent(distances: Tensor, fallback_max: bool = True) -> Tensor:
    """``[B]`` mean of the top ``int(0.01 N)`` of each ``[B, N]`` row (the official ``mean_top1p``); the
    row's maximum when that count is 0 (``fallback_max``; the batched script has none: NaN)."""
    count = int(distances.shape[1] * 0.01)
    if count == 0:
        if fallback_max:
            return distances.max(dim=1).values
        return torch.full(distances.shape[:1], float("nan"), dtype=distances.dtype, device=distances.device)
    return distances.topk(count, dim=1).values.mean(dim=1)


def check_knn(library: str) -> None:
    """Refuse an unknown ``method.knn``, or ``faiss`` where faiss-cpu is not installed (one line each)."""
    if library not in KNN_LIBRARIES:
        raise AnomalyDINOError(f"method.knn={library!r} is not one of {list(KNN_LIBRARIES)}")
    if library == "faiss":
        import_faiss()


def import_faiss() -> Any:
    """The ``faiss`` module, or one :class:`AnomalyDINOError` line saying how to get it or go without."""
    try:
        import faiss
    except ImportError as error:
        raise AnomalyDINOError(
            f"method.knn=faiss needs the faiss-cpu package, which is not importable here ({error}); "
            "install the project's dependencies (pip install -e .) or set method.knn=torch (same distances)"
        ) from None
    return faiss


def faiss_index(memory: Tensor, metric: str = "cosine") -> Any:
    """A faiss ``IndexFlatL2`` of the ``[R, W]`` memory, as the official code builds it (rows L2-normalised
    for ``cosine``, its ``L2_normalized``)."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(memory.detach().float().cpu().numpy(), dtype=np.float32).copy()
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return index


def faiss_distances(queries: Tensor, index: Any, k: int = 1, metric: str = "cosine") -> Tensor:
    """``[Q]`` distances of the queries to their ``k`` nearest rows of a :func:`faiss_index`: the official
    search (``L2_normalized``: the mean of the squared L2 of unit vectors, halved; ``L2``: the square root of
    the mean squared L2), on the queries' device and dtype."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(queries.detach().float().cpu().numpy(), dtype=np.float32).copy()
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    squared, _ = index.search(vectors, k)
    distances = torch.from_numpy(squared).mean(dim=1)
    distances = distances / 2 if metric == "cosine" else distances.sqrt()
    return distances.to(device=queries.device, dtype=queries.dtype)


def nearest_distances(
    queries: Tensor,
    memory: Tensor,
    k: int = 1,
    metric: str = "cosine",
    block_bytes: int = 1 << 28,
    knn: str = "torch",
    index: Any = None,
) -> Tensor:
    """``[Q]`` distance of each query to its ``k`` nearest memory rows, as the official faiss search.

    ``cosine`` (the official ``L2_normalized``): both sides L2-normalised, the mean of the ``k`` smallest
    ``1 - cos`` (faiss's squared L2 halved). ``l2``: the square root of the mean of the ``k`` smallest
    squared L2 distances. Exhaustive: ``knn="torch"`` by matrix products in blocks of at most
    ``block_bytes`` of distances, ``knn="faiss"`` by faiss-cpu's ``IndexFlatL2`` (``index``: one
    :func:`faiss_index` of ``memory`` already built, else it is built here). The two agree to float32
    rounding (the unit tests and ``python -m bench.perf knn`` check it).
    """
    if metric not in {"cosine", "l2"}:
        raise AnomalyDINOError(f"method.knn_metric={metric!r} is not one of ['cosine', 'l2']")
    if k < 1 or k > memory.shape[0]:
        raise AnomalyDINOError(f"method.knn_neighbors={k} needs 1..{memory.shape[0]} reference patches")
    if knn not in KNN_LIBRARIES:
        raise AnomalyDINOError(f"method.knn={knn!r} is not one of {list(KNN_LIBRARIES)}")
    if knn == "faiss":
        if queries.shape[0] == 0:
            return queries.new_zeros(0)
        return faiss_distances(
            queries, index if index is not None else faiss_index(memory, metric), k, metric
        )
    rows = max(1, block_bytes // (4 * max(1, memory.shape[0])))
    out = []
    if metric == "cosine":
        memory = F.normalize(memory, dim=-1)
        for start in range(0, queries.shape[0], rows):
            block = F.normalize(queries[start : start + rows], dim=-1)
            similarity = block @ memory.T
            top = similarity.topk(k, dim=1).values if k > 1 else similarity.max(dim=1, keepdim=True).values
            out.append((1 - top).mean(dim=1))
    else:
        squared_memory = (memory * memory).sum(dim=1)
        for start in range(0, queries.shape[0], rows):
            block = queries[start : start + rows]
            squared = (block * block).sum(dim=1, keepdim=True) + squared_memory - 2 * block @ memory.T
            nearest = squared.topk(k, dim=1, largest=False).values.clamp_min(0)
            out.append(nearest.mean(dim=1).sqrt())
    return torch.cat(out) if out else queries.new_zeros(0)


def mutual_patch_scores(
    tokens: Tensor, index: int, quantile: float = 0.001, block_bytes: int = 1 << 28
) -> Tensor:
    """``[N]`` batched zero-shot patch scores of image ``index`` against every other image's patches.

    The official ``calculate_cosine_distances``: ``1 - cos`` to all ``R`` other patches, the mean of the
    distances strictly below the ``int(quantile * R)``-th smallest (that distance itself where none is
    strictly below it, where the official code gives NaN).
    """
    others = torch.cat([tokens[:index], tokens[index + 1 :]]).flatten(0, 1)
    kth = int(quantile * others.shape[0])
    if kth < 1:
        raise AnomalyDINOError(
            f"the batched zero-shot mode needs at least {int(np.ceil(1 / quantile))} patches of the other "
            f"test images of a category, got {others.shape[0]} (score more images or use shots>=1)"
        )
    sample = F.normalize(tokens[index], dim=-1)
    others = F.normalize(others, dim=-1)
    rows = max(1, block_bytes // (4 * others.shape[0]))
    out = []
    for start in range(0, sample.shape[0], rows):
        distance = 1 - sample[start : start + rows] @ others.T
        threshold = distance.kthvalue(kth, dim=1, keepdim=True).values
        below = distance < threshold
        count = below.sum(dim=1)
        # No distance strictly below the k-th (ties, e.g. flat backgrounds): the official code divides 0 by 0
        # (NaN); the k-th smallest distance itself is the score here.
        mean = (distance * below).sum(dim=1) / count.clamp_min(1)
        out.append(torch.where(count > 0, mean, threshold[:, 0]))
    return torch.cat(out)


class AnomalyDINO(nn.Module):
    """The pure torch model of AnomalyDINO (see the module docstring for what it reproduces).

    Args:
        backbone: a frozen backbone with ``patch_tokens`` (published: DINOv2 ViT-S/14 at 448 px).
        zero_shot: the batched zero-shot mode (transductive) instead of a reference memory.
        knn_neighbors: nearest references averaged per patch (published 1).
        knn_metric: ``cosine`` (published ``L2_normalized``) or ``l2``.
        knn: the nearest-neighbour search, ``faiss`` (faiss-cpu's ``IndexFlatL2``, the official library
            and the faster on a CPU) or ``torch`` (matrix products on the features' device); the same
            distances to float32 rounding. Exported graphs search with torch.
        morphology: ``1d`` (published, the official column morphology) or ``2d`` (on the patch grid).
        mask_threshold: PC1 threshold of the background mask (published 10).
        map_sigma: Gaussian blur of the map in pixels of the map's resolution (published 4, at the files'
            resolution).
        quantile: the batched mode's fraction of nearest patches (published 0.001).
        block_bytes: memory bound of one block of distances (result unchanged).
    """

    cacheable = True
    #: The class's default; an instance in the batched zero-shot mode sets it True.
    transductive = False
    #: Why the current category cannot be exported (set per category: the background mask's PCA is an
    #: eigendecomposition, which ONNX has no operator for); None when it can.
    export_unsupported: str | None = None

    def __init__(
        self,
        backbone: nn.Module,
        zero_shot: bool = False,
        knn_neighbors: int = 1,
        knn_metric: str = "cosine",
        knn: str = "faiss",
        morphology: str = "1d",
        mask_threshold: float = MASK_THRESHOLD,
        map_sigma: float = 4.0,
        quantile: float = 0.001,
        block_bytes: int = 1 << 28,
    ) -> None:
        super().__init__()
        if morphology not in MORPHOLOGIES:
            raise AnomalyDINOError(f"method.morphology={morphology!r} is not one of {list(MORPHOLOGIES)}")
        if knn_metric not in {"cosine", "l2"}:
            raise AnomalyDINOError(f"method.knn_metric={knn_metric!r} is not one of ['cosine', 'l2']")
        check_knn(knn)
        self.backbone = backbone
        self.transductive = bool(zero_shot)
        self.knn_neighbors = int(knn_neighbors)
        self.knn_metric = knn_metric
        self.knn = knn
        self.morphology = morphology
        self.mask_threshold = float(mask_threshold)
        self.map_sigma = float(map_sigma)
        self.quantile = float(quantile)
        self.block_bytes = int(block_bytes)
        #: Whether the current category's test images are masked (set per category, :meth:`set_masking`).
        self.masking = False
        self.register_buffer("memory", torch.zeros(0, 0), persistent=False)
        # The faiss index of the memory and the very tensor it was built from (private: a saved detector
        # rebuilds it; the memory buffer may be replaced without set_memory, e.g. when a detector's state is
        # loaded). Held, so that its identity cannot pass to a later memory.
        self._index: Any = None
        self._index_memory: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A faiss index is no Python state (a copy or pickle of the model rebuilds it from the memory).
        return {**self.__dict__, "_index": None, "_index_memory": None}

    @property
    def grid(self) -> tuple[int, int]:
        """The backbone's square grid (of ``image_size`` inputs)."""
        return tuple(self.backbone.grid_size)

    def feature_grid(self, features: Mapping[str, Tensor]) -> tuple[int, int]:
        """The patch grid of ``features``: ``patch_grid`` (non-square inputs), else :attr:`grid`.

        Raises:
            AnomalyDINOError: the images of one set have different grids.
        """
        grids = features.get("patch_grid")
        if grids is None:
            return self.grid
        first = grids[0]
        if bool((grids != first).any()):
            raise AnomalyDINOError(
                f"images of {sorted({tuple(int(v) for v in row) for row in grids.tolist()})} patches are "
                "scored together; a category's files must share one size"
            )
        return int(first[0]), int(first[1])

    def input_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The input size ``(H, W)`` of a patch grid (``image_size`` square for the backbone's grid)."""
        if grid == self.grid:
            return self.backbone.image_size, self.backbone.image_size
        patch = int(self.backbone.patch_size)
        return grid[0] * patch, grid[1] * patch

    def feature_spec(self) -> dict[str, Any]:
        """What besides backbone, preprocessing and image determines :meth:`frozen_features`."""
        return {"kind": "patch_tokens", "blocks": "last", "norm": True}

    @torch.no_grad()
    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """``patch_tokens [B, N, W]``: the last block's patch tokens after the final norm; for non-square
        inputs also ``patch_grid [B, 2]``, the ``(h, w)`` grid of the ``N`` tokens (raster order)."""
        last = self.backbone.num_layers
        tokens = self.backbone.patch_tokens(images, [last], norm=True, normalized=normalized)[last]
        features = {"patch_tokens": tokens.float()}
        if images.shape[-2] != images.shape[-1]:
            grid = self.backbone.input_grid(images)
            features["patch_grid"] = torch.tensor(grid, device=tokens.device).expand(len(tokens), 2)
        return features

    def foreground(
        self, tokens: Tensor, masking: bool | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        """``[B, N]`` patches that are scored (all of them without masking); ``grid``: the tokens' patch
        grid (default the backbone's)."""
        if not (self.masking if masking is None else masking):
            return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return background_mask(tokens, grid or self.grid, self.mask_threshold, self.morphology)

    def set_masking(self, masking: bool) -> None:
        """Mask the background of the test images of the current category (or not)."""
        self.masking = bool(masking)
        self.export_unsupported = (
            "its background mask runs a PCA (an eigendecomposition) on each test image, which ONNX has no "
            "operator for; export a category without masking (method.masking=false)"
            if self.masking
            else None
        )

    def set_memory(self, tokens: Tensor | None, mask: Tensor | None = None) -> None:
        """The reference memory from ``[R, N, W]`` reference patch tokens (``mask [R, N]``: kept patches)."""
        self._index = self._index_memory = None
        if tokens is None:
            self.memory = torch.zeros(0, 0, device=self.memory.device)
            return
        kept = tokens.flatten(0, 1) if mask is None else tokens[mask]
        self.memory = kept.float().contiguous()

    def memory_index(self) -> Any:
        """The faiss index of the current memory, built once per memory (per category)."""
        memory = self.memory
        if self._index is None or self._index_memory is not memory:
            self._index, self._index_memory = faiss_index(memory, self.knn_metric), memory
        return self._index

    def patch_distances(self, tokens: Tensor, mask: Tensor, knn: str | None = None) -> Tensor:
        """``[B, N]`` nearest-reference distances, 0 for background patches (``knn``: the search,
        default the model's)."""
        if self.memory.numel() == 0:
            raise AnomalyDINOError(
                "AnomalyDINO has no reference memory: set shots>=1 (or shots=0 for the "
                "batched zero-shot mode)"
            )
        knn = knn or self.knn
        flat = nearest_distances(
            tokens.flatten(0, 1),
            self.memory,
            self.knn_neighbors,
            self.knn_metric,
            self.block_bytes,
            knn=knn,
            index=self.memory_index() if knn == "faiss" else None,
        ).view(tokens.shape[:2])
        return torch.where(mask, flat, torch.zeros_like(flat))

    def anomaly_map(
        self, distances: Tensor, size: tuple[int, int], grid: tuple[int, int] | None = None
    ) -> Tensor:
        """``[B, H, W]`` map: the ``[B, N]`` grid (``grid``, default the backbone's) resized bilinearly to
        ``size``, then blurred there (the official ``dists2map`` at the file's resolution)."""
        grid = distances.view(-1, 1, *(grid or self.grid))
        resized = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        return gaussian_blur(resized, self.map_sigma)

    def score(
        self,
        features: Mapping[str, Tensor],
        knn: str | None = None,
        map_size: tuple[int, int] | None = None,
    ) -> Prediction:
        """Score images against the reference memory (few-shot); ``knn`` overrides the model's search;
        ``map_size``: the maps' ``(H, W)`` (the files' resolution; default the input's). The image score
        comes from the raw patch grid."""
        tokens = features["patch_tokens"]
        grid = self.feature_grid(features)
        distances = self.patch_distances(tokens, self.foreground(tokens, grid=grid), knn)
        size = map_size or self.input_size(grid)
        return Prediction(mean_top_percent(distances), self.anomaly_map(distances, size, grid))

    def score_set(
        self, features: Mapping[str, Tensor], map_size: tuple[int, int] | None = None
    ) -> Prediction:
        """Batched zero-shot: score each test image against the category's other test images (``map_size``
        as in :meth:`score`)."""
        tokens = features["patch_tokens"]
        grid = self.feature_grid(features)
        mask = self.foreground(tokens, grid=grid)
        distances = torch.stack(
            [
                mutual_patch_scores(tokens, index, self.quantile, self.block_bytes)
                for index in range(len(tokens))
            ]
        )
        distances = torch.where(mask, distances, torch.zeros_like(distances))
        size = map_size or self.input_size(grid)
        return Prediction(
            mean_top_percent(distances, fallback_max=False), self.anomaly_map(distances, size, grid)
        )

    def export_module(self) -> ScoringGraph:
        """The export graph: normalised images -> (image score, map) with the memory baked in; it searches
        with torch matrix products (a faiss call is no graph operator), the same distances."""
        return TorchSearchGraph(self)


class TorchSearchGraph(ScoringGraph):
    """AnomalyDINO's export graph: :class:`ScoringGraph` with the nearest-neighbour search in torch."""

    def score(self, features: FrozenFeatures) -> Prediction:
        return self.model.score(features, knn="torch")
