"""The one torch dataset: reads the samples a source lists."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from anomaly_vlm.cache.digest import file_digest
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.corruptions import Corruption
from anomaly_vlm.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DataError,
    check_geometry,
    image_size_of,
    load_image,
    load_mask,
)

log = logging.getLogger(__name__)


class AnomalyImageDataset(Dataset):
    """Images (and masks) of a list of samples at the model input size.

    Args:
        samples: what to read.
        image_size: square side the images and masks are resized to (the model input size, which is
            also the evaluation resolution of the reference implementations).
        with_masks: read masks (normal images get an all-zero mask). False yields ``mask=None``.
        max_image_pixels: refuse an image or mask file with more pixels, before decoding it (the
            source's ``data.max_image_pixels``); None: no limit.
        corruption: a test-time corruption applied to every image (and moved mask) at the input size;
            the corrupted pixels are no file's pixels, so they bypass the feature cache.
        geometry: ``squash`` (default) or ``shorter_side`` (aspect kept, cropped to ``crop_multiple``;
            :func:`~anomaly_vlm.data.image_io.input_geometry`).
        crop_multiple: ``shorter_side`` crops the bottom and right to multiples of it (the patch size).
        evaluation_resolution: ``input`` (masks at the input size, default) or ``file`` (masks at each file's
            own resolution, and ``map_size`` asks the method for maps at it).
    """

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        with_masks: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        corruption: Corruption | None = None,
        geometry: str = "squash",
        crop_multiple: int = 1,
        evaluation_resolution: str = "input",
    ) -> None:
        check_test_geometry(geometry, crop_multiple, evaluation_resolution, corruption)
        self.geometry = geometry
        self.crop_multiple = int(crop_multiple)
        self.evaluation_resolution = evaluation_resolution
        self.samples = samples
        self.corruption = corruption
        self.image_size = int(image_size)
        self.with_masks = with_masks
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        geometry = (self.geometry, self.crop_multiple)
        image = load_image(sample.path, self.image_size, self.max_image_pixels, *geometry)
        at_file = self.evaluation_resolution == "file"
        file_size = image_size_of(sample.path, self.max_image_pixels) if at_file else None
        mask = None
        if self.with_masks:
            if sample.mask_path:
                mask_side = None if at_file else self.image_size
                mask, mask_size = load_mask(sample.mask_path, mask_side, self.max_image_pixels, *geometry)
                image_size = file_size or image_size_of(sample.path, self.max_image_pixels)
                if mask_size != image_size:
                    log.warning(
                        "mask %s is %sx%s but its image %s is %sx%s; both are resized to %s",
                        sample.mask_path,
                        *mask_size,
                        sample.path,
                        *image_size,
                        self.image_size,
                    )
                expected = file_size[::-1] if at_file else tuple(image.shape[-2:])
                if tuple(mask.shape) != tuple(expected):
                    raise DataError(
                        f"mask {sample.mask_path} gives {tuple(mask.shape)} pixels where its image "
                        f"{sample.path} gives {tuple(expected)} (datamodule.geometry={self.geometry}, "
                        f"evaluation_resolution={self.evaluation_resolution})"
                    )
            else:
                mask = image.new_zeros(*(file_size[::-1] if at_file else image.shape[-2:]))
        if self.corruption is not None:
            image, mask = self.corruption(image, mask, sample.path, sample.category)
        return {
            "image": image,
            "mask": mask,
            "label": sample.label,
            "category": sample.category,
            "path": sample.path,
            "defect_type": sample.defect_type,
            # The image is exactly the file's pixels, so its frozen features can be cached by content.
            "digest": input_digest(sample.path, self.geometry, self.crop_multiple)
            if self.corruption is None
            else None,
            # The resolution the method's map must have: the file's (height, width), or None: the input's.
            "map_size": None if file_size is None else (int(file_size[1]), int(file_size[0])),
        }


#: ``datamodule.evaluation_resolution``: ``input`` (maps and ground truth at the model input size, every
#: method's default) or ``file`` (at each file's own resolution; AnomalyDINO's official evaluation).
EVALUATION_RESOLUTIONS: tuple[str, ...] = ("input", "file")


def check_evaluation_resolution(value: str) -> None:
    """Refuse an unknown ``datamodule.evaluation_resolution`` (:class:`DataError`)."""
    if value not in EVALUATION_RESOLUTIONS:
        raise DataError(
            f"datamodule.evaluation_resolution={value!r} is not one of {list(EVALUATION_RESOLUTIONS)}"
        )


def check_test_geometry(
    geometry: str, crop_multiple: int, evaluation_resolution: str, corruption: object | None
) -> None:
    """Refuse an unknown geometry or evaluation resolution, or a test corruption evaluated at the files'
    resolution (corruptions act on the input-size images, so their ground truth is at the input size)."""
    check_geometry(geometry, crop_multiple)
    check_evaluation_resolution(evaluation_resolution)
    if corruption is not None and evaluation_resolution == "file":
        raise DataError(
            "datamodule.test_corruption corrupts the images at the input size, so it cannot be evaluated "
            "against ground truth at the files' resolution (datamodule.evaluation_resolution=input)"
        )


def input_digest(path: str, geometry: str = "squash", crop_multiple: int = 1) -> str:
    """The feature-cache key of a file's input pixels: its content digest, qualified by the geometry
    unless ``squash`` (the key every cache entry had before geometries existed, so they stay valid)."""
    digest = file_digest(path)
    return digest if geometry == "squash" else f"{digest}:{geometry}:{int(crop_multiple)}"
