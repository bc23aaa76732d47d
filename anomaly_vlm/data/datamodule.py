"""The datamodule: per-category test loaders, few-shot references, auxiliary training data."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from anomaly_vlm.data.batch import Sample, collate_samples
from anomaly_vlm.data.corruptions import corruption_from
from anomaly_vlm.data.dataset import AnomalyImageDataset, check_test_geometry, input_digest
from anomaly_vlm.data.datasets.base import DatasetSource
from anomaly_vlm.data.defect_synthesis import AnomalySynthesizer, EpochSampler, SynthesizedAnomalies
from anomaly_vlm.data.distributed import ContiguousShardSampler, rank_and_world
from anomaly_vlm.data.image_io import DataError, image_size_of, input_geometry, load_image
from anomaly_vlm.data.mosaic import MosaicDataset
from anomaly_vlm.data.sampling import ShuffledOrder, check_reference_draw, draw_references


class AnomalyDataModule(L.LightningDataModule):
    """Serves one category at a time for testing, and the auxiliary dataset for training.

    Categories are looped inside one job (the backbone is built once), so test loaders are made per
    category rather than through Lightning's single ``test_dataloader`` hook. Each dataset's files are
    read within its own ``max_image_pixels`` (``data.`` / ``train_data.max_image_pixels``).

    Args:
        source: the evaluated dataset.
        image_size: model input size (``${backbone.image_size}``).
        batch_size: test batch size.
        num_workers: loader worker processes.
        train_source: the auxiliary dataset trainable methods learn from (the cross-dataset protocol
            trains on the OTHER dataset's test split, masks included); None for training-free methods.
        train_split: which split of ``train_source`` to train on (``test`` in the published protocol).
        train_batch_size: training batch size.
        train_mosaic_probability: chance that a training item is replaced by a 2x2 mosaic of four
            images of its category (:class:`~anomaly_vlm.data.mosaic.MosaicDataset`); 0 disables it.
        train_mosaic_tiles: how the mosaic's tiles are drawn: ``any`` (APRIL-GAN's release: a defect type,
            ``good`` included, then an image) or ``anomalous`` (Bayes-PFL's: four anomalous images).
        train_synthesis: makes defects (with masks) on the normal training images
            (``train_data.synthesize_anomalies=true``), so a training set of normal images only works;
            None trains on the dataset's own defects, which it must then have.
        seed: with the epoch, the seed of the training order and of the mosaics (``${seed}``).
        test_corruption: a corruption of :mod:`anomaly_vlm.data.corruptions` applied to the test images
            (rotation, brightness_contrast, blur, jpeg, noise); None tests the clean images.
        test_corruption_strength: its strength, 1 to 3.
        test_corruption_seed: seeds each image's draws (the same for every method).
        reference_draw: how few-shot references are chosen
            (:func:`~anomaly_vlm.data.sampling.draw_references`): ``random`` (a seeded draw, the
            project's protocol) or ``sorted_slices`` (AnomalyDINO's official disjoint slices of the
            name-sorted normal images).
        geometry: how a file becomes the model input (:data:`~anomaly_vlm.data.image_io.GEOMETRIES`):
            ``squash`` (default, every method's protocol) or ``shorter_side`` (AnomalyDINO's official
            preprocessing: the shorter side to ``image_size``, the aspect ratio kept, the bottom and right
            cropped to multiples of ``crop_multiple``; a non-square file gives a non-square input).
        crop_multiple: see ``geometry`` (AnomalyDINO: the patch size, 14).
        evaluation_resolution: ``input`` (maps and ground truth at the input size, default) or ``file``
            (ground truth at each file's own resolution, and maps asked at it: AnomalyDINO's official
            evaluation). A category's files must then give one map size (checked before scoring).

    The training data of an epoch (order, mosaics, synthesized defects) is a function of the seeds and
    the epoch alone, not of the global random generators, the loader's workers or earlier epochs; the
    only position to restore when an interrupted training resumes is the epoch (:meth:`state_dict`).
    """

    def __init__(
        self,
        source: DatasetSource,
        image_size: int,
        batch_size: int = 8,
        num_workers: int = 0,
        train_source: DatasetSource | None = None,
        train_split: str = "test",
        train_batch_size: int = 8,
        train_mosaic_probability: float = 0.0,
        train_mosaic_tiles: str = "any",
        train_synthesis: AnomalySynthesizer | None = None,
        seed: int = 0,
        test_corruption: str | None = None,
        test_corruption_strength: int = 1,
        test_corruption_seed: int = 0,
        reference_draw: str = "random",
        geometry: str = "squash",
        crop_multiple: int = 1,
        evaluation_resolution: str = "input",
    ) -> None:
        super().__init__()
        check_test_geometry(geometry, crop_multiple, evaluation_resolution, test_corruption)
        self.geometry = geometry
        self.crop_multiple = int(crop_multiple)
        self.evaluation_resolution = evaluation_resolution
        check_reference_draw(reference_draw)
        self.reference_draw = reference_draw
        self.test_corruption = corruption_from(
            test_corruption, test_corruption_strength, test_corruption_seed
        )
        self.source = source
        self.image_size = int(image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_source = train_source
        self.train_split = train_split
        self.train_batch_size = train_batch_size
        self.train_mosaic_probability = float(train_mosaic_probability)
        self.train_mosaic_tiles = str(train_mosaic_tiles)
        self.train_synthesis = train_synthesis
        self.seed = int(seed)
        self._train_sampler: EpochSampler | None = None
        self._next_train_epoch = 0

    @property
    def categories(self) -> list[str]:
        return self.source.categories

    @property
    def input_geometry(self) -> tuple[str, int]:
        """``(geometry, crop_multiple)``: how a file becomes the model input."""
        return self.geometry, self.crop_multiple

    def input_digest(self, sample: Sample) -> str:
        """The feature-cache key of a sample's input pixels (its file's digest, qualified by the geometry)."""
        return input_digest(sample.path, *self.input_geometry)

    def _loader(
        self, dataset: AnomalyImageDataset, batch_size: int, shuffle: bool = False, sampler=None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def category_test_dataloader(self, category: str) -> DataLoader:
        """Test images of one category, with masks when the category has them."""
        samples = self.source.samples(category, "test")
        dataset = AnomalyImageDataset(
            samples,
            self.image_size,
            with_masks=self.source.has_masks(category),
            max_image_pixels=self.source.max_image_pixels,
            corruption=self.test_corruption,
            geometry=self.geometry,
            crop_multiple=self.crop_multiple,
            evaluation_resolution=self.evaluation_resolution,
        )
        if self.geometry != "squash" or self.evaluation_resolution != "input":
            # Inputs (shorter_side) and maps (file resolution) take each file's size.
            limit = self.source.max_image_pixels
            self._check_one_map_size(category, [image_size_of(sample.path, limit) for sample in samples])
        # Under DDP each rank tests a contiguous, unpadded shard (a single process gets everything).
        return self._loader(dataset, self.batch_size, sampler=ContiguousShardSampler(len(dataset)))

    def _check_one_map_size(self, category: str, sizes: list[tuple[int, int]]) -> None:
        """Refuse, before anything is scored, a category whose maps would differ in size (a category's
        maps and masks are held as one ``[N, H, W]`` tensor each). Files of one map size also give one
        input size, so every batch holds one ``[B, 3, H, W]``."""
        if self.evaluation_resolution == "file":
            shapes = set(sizes)
        else:
            shapes = {input_geometry(*size, self.image_size, *self.input_geometry)[1] for size in sizes}
        if len(shapes) > 1:
            listed = ", ".join(f"{width}x{height}" for width, height in sorted(shapes))
            raise DataError(
                f"category '{category}' holds files of several sizes ({listed} px maps with "
                f"datamodule.geometry={self.geometry}, evaluation_resolution={self.evaluation_resolution}); "
                "a category's maps must share one size (datamodule.geometry=squash "
                "evaluation_resolution=input gives every file the input size)"
            )

    def reference_samples(self, category: str, shots: int, seed: int) -> list[Sample]:
        """The few-shot normal references of a category (empty for zero-shot)."""
        if shots == 0:
            return []
        return draw_references(
            self.source.samples(category, "train"), shots, seed, category, rule=self.reference_draw
        )

    def load_images(self, samples: list[Sample], file_resolution: bool = False) -> Tensor:
        """``[k, 3, S, S]`` images of the given samples (for few-shot memory banks).

        ``file_resolution``: ``[k, 3, H, W]`` at the files' own resolution instead, for a method that
        changes the pixels before it resizes them itself (AnomalyDINO's rotation of its references); the
        files must then share one size.
        """
        limit = self.source.max_image_pixels
        size = None if file_resolution else self.image_size
        images = [load_image(sample.path, size, limit, *self.input_geometry) for sample in samples]
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            first = images[0].shape
            other = next(index for index, image in enumerate(images) if image.shape != first)
            second = images[other].shape
            raise DataError(
                f"the reference images {samples[0].path} ({first[2]}x{first[1]}) and {samples[other].path} "
                f"({second[2]}x{second[1]}) differ in size, and the method takes its references at their "
                "files' resolution (AnomalyDINO: method.rotate_before_resize=false takes them at the input "
                "size)"
            )
        return torch.stack(images)

    def train_samples(self) -> list[Sample]:
        """Every sample of the auxiliary dataset's training split, all its categories."""
        if self.train_source is None:
            raise ValueError("this method trains, but no auxiliary dataset is set (train_data=...)")
        samples = []
        for category in self.train_source.categories:
            try:
                samples.extend(self.train_source.samples(category, self.train_split))
            except DataError as error:
                raise DataError(
                    f"{error} (train_data, split datamodule.train_split={self.train_split})"
                ) from None
        return samples

    def check_training_data(self) -> None:
        """Training needs defects: the dataset's own (with masks) or synthesized ones.

        Raises:
            DataError: the training split holds normal images only and no synthesis is configured.
        """
        samples = self.train_samples()
        if self.train_synthesis is not None:
            if not any(sample.label == 0 for sample in samples):
                raise DataError(
                    f"train_data.synthesize_anomalies=true makes defects on normal images, but split "
                    f"'{self.train_split}' of train_data={self.train_source.name} has none"
                )
            return
        if not any(sample.label == 1 for sample in samples):
            categories = sorted({sample.category for sample in samples})
            raise DataError(
                f"train_data={self.train_source.name} (split '{self.train_split}', categories {categories}) "
                f"holds only normal images ({len(samples)}), no defects with masks to learn from; add "
                "train_data.synthesize_anomalies=true to train on defects synthesized on them"
            )

    def train_dataloader(self) -> DataLoader:
        self.check_training_data()
        dataset = AnomalyImageDataset(
            self.train_samples(),
            self.image_size,
            with_masks=True,
            max_image_pixels=self.train_source.max_image_pixels,
        )
        if self.train_mosaic_probability > 0:
            dataset = MosaicDataset(
                dataset, self.train_mosaic_probability, seed=self.seed, tiles=self.train_mosaic_tiles
            )
        if self.train_synthesis is not None:
            dataset = SynthesizedAnomalies(dataset, self.train_synthesis)
        rank, world = rank_and_world()
        if world > 1:
            # trainer=ddp turns Lightning's sampler injection off (test shards must not be padded).
            order = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        else:
            order = ShuffledOrder(len(dataset), self.seed)
        # Items that draw per epoch (mosaics, synthesized defects) get (epoch, index) keys.
        sampler = EpochSampler(order, keyed=getattr(dataset, "takes_epoch", False))
        # A reloaded loader goes on where the last one stopped; the first starts at the restored epoch.
        previous = self._train_sampler
        sampler.set_epoch(previous.epoch if previous is not None else self._next_train_epoch)
        self._train_sampler = sampler
        return self._loader(dataset, self.train_batch_size, sampler=sampler)

    def state_dict(self) -> dict[str, int]:
        """The training position saved with each checkpoint: the epoch the training sampler runs next."""
        if self._train_sampler is None:
            return {}
        return {"train_epoch": int(self._train_sampler.epoch)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue the training data at the checkpoint's epoch (a resumed training)."""
        self._next_train_epoch = int(state_dict.get("train_epoch", 0))
        self._train_sampler = None
