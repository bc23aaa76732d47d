"""Lightning wrapper of AnomalyDINO (``method=anomalydino``): training-free, prompt-free, on DINOv2."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anomaly_vlm.backbones.capabilities import BackboneNeeds
from anomaly_vlm.data.image_io import check_geometry, resize_image
from anomaly_vlm.methods.anomalydino.torch_model import (
    ROTATION_ANGLES,
    AnomalyDINO,
    check_knn,
    preprocess_table,
    rotate_references,
)
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.methods.contract import concat_features
from anomaly_vlm.prompts import PromptSet


class AnomalyDINOModule(AnomalyMethod):
    """AnomalyDINO: few-shot patch nearest neighbours on DINOv2 features; nothing is trained.

    Paper: Damm et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection with DINOv2",
    WACV 2025.

    ``shots>=1``: each category's reference images (with the official rotation augmentation where the
    preprocessing table asks for it) form a memory of patch features; a test patch scores ``1 - cos`` to
    its nearest reference patch, background patches of masked categories score 0, the image scores the
    mean of its top 1 % patches. ``shots=0`` is the published batched zero-shot mode: each test image is
    scored against the category's other test images, so it is transductive (results say so). No prompt
    plays any part (``prompts`` is accepted for the common constructor and ignored).

    Args:
        backbone: a backbone with ``patch_tokens`` (published: DINOv2 ViT-S/14, 448 px few-shot, 672 px
            batched zero-shot).
        prompts: ignored.
        shots: normal references per category; 0 = the batched zero-shot mode.
        preprocess: the official ``--preprocess`` table (``agnostic``, published few-shot;
            ``masking_only``, published batched zero-shot; ``informed``; ``*_no_mask``; ``force_*``).
        dataset: the data source's ``_target_``, to pick the table (MVTec AD, VisA; others: no masking).
        masking: force the test images' background masking on or off (None: the table).
        rotation: force the references' rotation augmentation on or off (None: the table).
        rotate_before_resize: turn the references at their files' resolution and resize each copy, as the
            official code does (default); False turns the references resized to the input size (the
            loader's images), cheaper, different pixels where the files are larger than the input.
        mask_references: mask the references' background too where the test images are masked (the
            official ``--mask_ref_images``, off by default; the demo notebook masks them).
        geometry: how the data loader turns a file into the input: the references this method resizes
            itself (turned copies, files' resolution) are resized the same way. ``shorter_side``
            (published: the shorter side to ``image_size``, aspect kept, cropped to ``crop_multiple``) or
            ``squash``. A job sets it (:attr:`input_geometry`) from the datamodule that serves the images.
        crop_multiple: see ``geometry`` (published: the patch size, 14).
        knn_neighbors: nearest reference patches averaged (published 1).
        knn_metric: ``cosine`` (published ``L2_normalized``) or ``l2``.
        knn: the nearest-neighbour search: ``faiss`` (faiss-cpu, the official library, faster on a CPU;
            default) or ``torch`` (matrix products on the features' device); the same distances.
        morphology: ``1d`` (published: the official code dilates and closes the raster-order column of
            patches) or ``2d`` (the corrected morphology on the patch grid).
        mask_threshold: PC1 threshold of the background mask (published 10).
        map_sigma: Gaussian blur of the map (published 4, in pixels of the map's resolution: the files' with
            ``datamodule.evaluation_resolution=file``, as published).
        quantile: nearest fraction averaged in the batched zero-shot mode (published 0.001).
        reference_batch_size: references encoded per forward pass (memory only).
        block_bytes: memory bound of one block of distances (result unchanged).
        text_cache_dir: unused (no text).
    """

    method_name = "anomalydino"
    supports_few_shot = True
    uses_prompts = False
    published_taps = "last"
    #: Reads patch tokens only: runs on DINOv2 (published) and on any CLIP backbone alike.
    backbone_needs: ClassVar[BackboneNeeds] = BackboneNeeds(
        text_tower=False, patch_tokens=True, clip_tokens=False
    )

    @classmethod
    def check_options(cls, options: Any) -> None:
        """Refuse an unknown ``method.preprocess`` or ``method.knn``, or ``method.knn=faiss`` without
        faiss-cpu, before weights load (one ``error:`` line)."""
        preprocess_table(None, "", str(options.get("preprocess", "agnostic")))
        check_knn(str(options.get("knn", "faiss")))

    def __init__(
        self,
        backbone: nn.Module,
        prompts: PromptSet,
        shots: int = 1,
        preprocess: str = "agnostic",
        dataset: str | None = None,
        masking: bool | None = None,
        rotation: bool | None = None,
        rotate_before_resize: bool = True,
        mask_references: bool = False,
        geometry: str = "squash",
        crop_multiple: int = 1,
        knn_neighbors: int = 1,
        knn_metric: str = "cosine",
        knn: str = "faiss",
        morphology: str = "1d",
        mask_threshold: float = 10.0,
        map_sigma: float = 4.0,
        quantile: float = 0.001,
        reference_batch_size: int = 8,
        block_bytes: int = 1 << 28,
        text_cache_dir: str | None = None,
    ) -> None:
        preprocess_table(dataset, "", preprocess)  # an unknown preprocess fails before anything runs
        model = AnomalyDINO(
            backbone,
            zero_shot=int(shots) == 0,
            knn_neighbors=knn_neighbors,
            knn_metric=knn_metric,
            knn=knn,
            morphology=morphology,
            mask_threshold=mask_threshold,
            map_sigma=map_sigma,
            quantile=quantile,
            block_bytes=block_bytes,
        )
        super().__init__(model, prompts, shots, text_cache_dir)
        self.preprocess = preprocess
        self.dataset = dataset
        self.masking_override = masking
        self.rotation_override = rotation
        self.rotate_before_resize = bool(rotate_before_resize)
        self.mask_references = bool(mask_references)
        check_geometry(geometry, crop_multiple)
        #: ``(geometry, crop_multiple)`` of the data loader's inputs; the job sets it from its datamodule.
        self.input_geometry: tuple[str, int] = (geometry, int(crop_multiple))
        self.reference_batch_size = int(reference_batch_size)

    @property
    def references_at_file_resolution(self) -> bool:
        """Whether the job loads this method's references at their files' resolution (the few-shot mode
        with ``rotate_before_resize``): the method turns and resizes them itself."""
        return self.rotate_before_resize and not self.model.transductive

    def category_settings(self, category: str) -> tuple[bool, bool]:
        """``(masking, rotation)`` of ``category``: the official table unless forced by the options."""
        masking, rotation = preprocess_table(self.dataset, category, self.preprocess)
        if self.masking_override is not None:
            masking = bool(self.masking_override)
        if self.rotation_override is not None:
            rotation = bool(self.rotation_override)
        return masking, rotation

    @torch.no_grad()
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        """Masking for the category's test images, and (few-shot) the reference memory."""
        masking, rotation = self.category_settings(category)
        self.model.set_masking(masking)
        if self.model.transductive or reference_images is None or len(reference_images) == 0:
            self.model.set_memory(None)
            return
        size = self.model.backbone.image_size
        geometry = self.input_geometry
        # References at their files' resolution (references_at_file_resolution) are resized here exactly as
        # the loader resizes a file, so the 0-degree copy is the loader's image (and its cache entry).
        resized = reference_images
        if geometry[0] != "squash" or tuple(reference_images.shape[-2:]) != (size, size):
            resized = torch.stack([resize_image(image, size, *geometry) for image in reference_images])
        features = self.reference_features(resized, self.reference_batch_size)
        grid = self.model.feature_grid(features)
        tokens = features["patch_tokens"]
        if rotation:
            # The official code turns the file's pixels, then resizes each copy (rotate_before_resize). The
            # turned copies are no file's pixels, so they bypass the feature cache.
            source = reference_images if self.rotate_before_resize else resized
            turned = rotate_references(source, ROTATION_ANGLES[1:], size, *geometry)
            parts = [
                self.frozen_features(turned[start : start + self.reference_batch_size])
                for start in range(0, len(turned), self.reference_batch_size)
            ]
            tokens = torch.cat([tokens, concat_features(parts)["patch_tokens"]])
        mask = self.model.foreground(tokens, masking, grid) if (self.mask_references and masking) else None
        self.model.set_memory(tokens, mask)
        if grid[0] != grid[1] and self.model.export_unsupported is None:
            # The ONNX graph takes square image_size inputs (the detector's bicubic squash).
            height, width = self.model.input_size(grid)
            self.model.export_unsupported = (
                f"its references are {width}x{height} px (datamodule.geometry={geometry[0]} keeps the "
                f"files' aspect ratio), but an exported graph takes square {size}x{size} inputs; export "
                "from square files or with datamodule.geometry=squash"
            )

    def score_at(self, features, map_size: tuple[int, int]):
        """Maps resized to ``map_size`` (the files' resolution) from the patch grid and blurred there, as
        the official code finishes them; image scores from the raw grid."""
        return self.model.score(features, map_size=map_size)

    def score_set_at(self, features, map_size: tuple[int, int]):
        """:meth:`score_at` for the batched zero-shot mode."""
        return self.model.score_set(features, map_size=map_size)

    def feature_spec(self) -> dict[str, Any]:
        return self.model.feature_spec()

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "transductive": bool(self.model.transductive)}
