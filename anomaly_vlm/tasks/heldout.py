"""The held-out normal pass of ``threshold.method=normal_fpr``, on the one evaluation path."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L

from anomaly_vlm.callbacks.scoring import CategoryScoring
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.datamodule import AnomalyDataModule
from anomaly_vlm.decisions.consumers import HeldOutSource, HeldOutThresholds
from anomaly_vlm.decisions.thresholds import CategoryThresholds, ThresholdSettings
from anomaly_vlm.tasks.categories import score_categories


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
    """
    source = HeldOutSource(datamodule.source, references, int(settings.max_holdout), datamodule.categories)
    heldout = AnomalyDataModule(
        source, datamodule.image_size, batch_size=datamodule.batch_size, num_workers=datamodule.num_workers
    )
    chooser = HeldOutThresholds(settings.target_fpr)
    scoring = CategoryScoring([chooser])
    score_categories(make_trainer(callbacks=[scoring]), method, heldout, scoring, references)
    return chooser.thresholds
