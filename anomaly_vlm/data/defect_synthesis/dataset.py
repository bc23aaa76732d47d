"""Training items with synthesized defects, and the sampler that tells them the epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.defect_synthesis.synthesizer import AnomalySynthesizer
from anomaly_vlm.data.image_io import load_image
from anomaly_vlm.data.sampling import epoch_key


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys so an item's random draws depend on the epoch, not on loader state.

    Lightning calls ``set_epoch`` before every training epoch (also when it resumes one); iterated
    without it, each pass counts as the next epoch. Every pass hands its epoch to the wrapped sampler
    too (a ``DistributedSampler`` or :class:`~anomaly_vlm.data.sampling.ShuffledOrder` reshuffles by it).

    ``epoch`` is always the epoch of the next pass, which is what a resumed training restores: a loader
    with workers asks for its first indices when it is created, before Lightning's ``set_epoch``.

    Args:
        sampler: the order of the indices (random, or a rank's shard under DDP).
        keyed: yield ``(epoch, index)`` keys (for datasets whose items draw per epoch: mosaics,
            synthesized defects); False yields the plain indices.
    """

    def __init__(self, sampler: Sampler, keyed: bool = True) -> None:
        self.sampler = sampler
        self.keyed = keyed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]] | Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)
        for index in self.sampler:
            yield (epoch, int(index)) if self.keyed else int(index)


class SynthesizedAnomalies(Dataset):
    """Each normal item becomes, with the synthesizer's probability, an anomalous one with its mask.

    Anomalous items of the wrapped dataset (real defects with masks) pass through unchanged. A
    synthesized item is labelled 1, its ``defect_type`` is ``synthetic_<kind>``, and its ``digest`` is
    None: it is not a file's pixels, so its frozen features bypass the feature cache (as mosaics do).

    Args:
        dataset: training items with masks (an :class:`AnomalyImageDataset`, or a mosaic of one).
        synthesizer: makes the defects.
    """

    #: Keys are ``(epoch, index)`` (:class:`EpochSampler`); a plain index is epoch 0.
    takes_epoch = True

    def __init__(self, dataset: Dataset, synthesizer: AnomalySynthesizer) -> None:
        base = getattr(dataset, "dataset", dataset)
        if not isinstance(base, AnomalyImageDataset) or not base.with_masks:
            raise ValueError("synthesized anomalies need a training dataset that returns masks")
        self.dataset = dataset
        self.synthesizer = synthesizer
        self.samples = base.samples
        self.image_size = base.image_size
        self.max_image_pixels = base.max_image_pixels
        self._normal = [index for index, sample in enumerate(self.samples) if sample.label == 0]
        if not self._normal:
            raise ValueError("synthesized anomalies need normal training images")

    def __len__(self) -> int:
        return len(self.dataset)

    def _donor(self, index: int, rng: np.random.Generator):
        category = self.samples[index].category

        def donor(other_category: bool) -> np.ndarray | None:
            pool = [
                other
                for other in self._normal
                if other != index and (not other_category or self.samples[other].category != category)
            ]
            if not pool:
                return None
            chosen = self.samples[pool[int(rng.integers(len(pool)))]]
            return load_image(chosen.path, self.image_size, self.max_image_pixels).permute(1, 2, 0).numpy()

        return donor

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = epoch_key(key)
        item = self.dataset[(epoch, index) if getattr(self.dataset, "takes_epoch", False) else index]
        if item["label"] != 0:
            return item
        image = item["image"].permute(1, 2, 0).numpy()
        # The donor draws its own stream, so the defect's draws do not depend on whether it is asked.
        donor_rng = np.random.default_rng([self.synthesizer.seed, int(epoch), int(index), 1])
        made = self.synthesizer(image, epoch, index, self._donor(index, donor_rng))
        if made is None:
            return item
        mask = torch.from_numpy(made.mask)
        # Outside the mask the pixels are the original tensor's, bit for bit.
        synthesized = torch.where(mask[None], torch.from_numpy(made.image).permute(2, 0, 1), item["image"])
        return {
            **item,
            "image": synthesized.contiguous(),
            "mask": mask.float(),
            "label": 1,
            "defect_type": f"synthetic_{made.kind}",
            "digest": None,  # not any file's pixels: bypasses the feature cache
        }
