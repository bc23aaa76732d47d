"""The held-out normal pass of ``threshold.method=normal_fpr``, on the one evaluation path."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import lightning as L

from anomaly_vlm.callbacks.scoring import CategoryScoring
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datamodule import AnomalyDataModule
from anomaly_vlm.data.image_io import DataError
from anomaly_vlm.decisions.consumers import HeldOutSource, HeldOutThresholds, same_file
from anomaly_vlm.decisions.thresholds import CategoryThresholds, ThresholdSettings
from anomaly_vlm.tasks.categories import score_categories

log = logging.getLogger(__name__)


def training_images(datamodule: AnomalyDataModule) -> set[str]:
    """:func:`~anomaly_vlm.decisions.consumers.same_file` keys of the images the method trains on.

    The job's auxiliary dataset (``train_data``, split ``datamodule.train_split``) when the method uses
    one, trained here or loaded with ``ckpt_path``; empty otherwise. When ``train_data`` and ``data``
    share files (``train_data.synthesize_anomalies=true datamodule.train_split=train`` on the same
    folder), those files are not held out.
    """
    if datamodule.train_source is None:
        return set()
    try:
        samples = datamodule.train_samples()
    except DataError as error:
        log.warning("threshold.method=normal_fpr: the training images cannot be listed (%s)", error)
        return set()
    return {same_file(sample.path) for sample in samples}


def heldout_thresholds(
    make_trainer: Callable[..., L.Trainer],
    method: L.LightningModule,
    datamodule: AnomalyDataModule,
    references: Mapping[str, Sequence[Sample]],
    settings: ThresholdSettings,
) -> dict[str, CategoryThresholds]:
    """Score every category's held-out normal images on the evaluation path; their ``normal_fpr`` thresholds.

    Args:
        make_trainer: ``make_trainer(callbacks=[...])`` builds a trainer (job trainer config, no logger).
        method: the set-up method (trained parameters loaded).
        datamodule: the job's datamodule; its source's normal training images are the pool.
        references: the few-shot references per category, excluded from the held-out images.
        settings: the ``threshold`` settings.

    The images the method was trained on (:func:`training_images`) are excluded too.
    """
    trained = training_images(datamodule)
    source = HeldOutSource(
        datamodule.source, references, int(settings.max_holdout), datamodule.categories, trained_on=trained
    )
    heldout = AnomalyDataModule(
        source,
        datamodule.image_size,
        batch_size=datamodule.batch_size,
        num_workers=datamodule.num_workers,
        # The held-out images are scored as the test images are (same input and map geometry).
        geometry=datamodule.geometry,
        crop_multiple=datamodule.crop_multiple,
        evaluation_resolution=datamodule.evaluation_resolution,
    )
    chooser = HeldOutThresholds(settings.target_fpr)
    scoring = CategoryScoring([chooser])
    score_categories(make_trainer(callbacks=[scoring]), method, heldout, scoring, references)
    return chooser.thresholds
