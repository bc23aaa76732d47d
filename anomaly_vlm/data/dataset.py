"""The one torch dataset: reads the samples a source lists."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from anomaly_vlm.cache.digest import file_digest
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.corruptions import Corruption
from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, image_size_of, load_image, load_mask

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
    """

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        with_masks: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        corruption: Corruption | None = None,
    ) -> None:
        self.samples = samples
        self.corruption = corruption
        self.image_size = int(image_size)
        self.with_masks = with_masks
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.path, self.image_size, self.max_image_pixels)
        mask = None
        if self.with_masks:
            if sample.mask_path:
                mask, mask_size = load_mask(sample.mask_path, self.image_size, self.max_image_pixels)
                image_size = image_size_of(sample.path, self.max_image_pixels)
                if mask_size != image_size:
                    log.warning(
                        "mask %s is %sx%s but its image %s is %sx%s; both are resized to %s",
                        sample.mask_path,
                        *mask_size,
                        sample.path,
                        *image_size,
                        self.image_size,
                    )
            else:
                mask = image.new_zeros(self.image_size, self.image_size)
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
            "digest": file_digest(sample.path) if self.corruption is None else None,
        }
