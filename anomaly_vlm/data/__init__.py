"""Datasets, the typed batch, the datamodule and the few-shot sampler."""

from anomaly_vlm.data.batch import AnomalyBatch, Sample, collate_samples
from anomaly_vlm.data.datamodule import AnomalyDataModule
from anomaly_vlm.data.datasets import DatasetSource, MVTecLayout
from anomaly_vlm.data.image_io import DataError

__all__ = [
    "AnomalyBatch",
    "AnomalyDataModule",
    "DataError",
    "DatasetSource",
    "MVTecLayout",
    "Sample",
    "collate_samples",
]
