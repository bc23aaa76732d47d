"""The one per-category scoring loop, shared by testing and prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L

from anomaly_vlm.callbacks.scoring import CategoryScoring
from anomaly_vlm.data import AnomalyDataModule, Sample
from anomaly_vlm.methods.base import AnomalyMethod


def score_categories(
    trainer: L.Trainer,
    method: AnomalyMethod,
    datamodule: AnomalyDataModule,
    scoring: CategoryScoring,
    references: Mapping[str, Sequence[Sample]],
) -> None:
    """Score every category of ``datamodule`` in turn; ``scoring`` (one of the trainer's callbacks)
    sets the method up for each category and hands each finished category to its consumers."""
    if scoring not in trainer.callbacks:
        raise ValueError("the CategoryScoring callback must be one of the trainer's callbacks")
    # A method that changes its references' pixels before the resize (AnomalyDINO's rotation) takes them at
    # their files' resolution and resizes them itself.
    file_resolution = bool(getattr(method, "references_at_file_resolution", False))
    if hasattr(method, "input_geometry"):
        # ... and resizes them as the loader resizes the test images (datamodule.geometry).
        method.input_geometry = datamodule.input_geometry
    for category in datamodule.categories:
        chosen = references.get(category) or []
        scoring.begin(
            category,
            datamodule.load_images(list(chosen), file_resolution) if chosen else None,
            [datamodule.input_digest(sample) for sample in chosen] if chosen else None,
        )
        trainer.test(method, dataloaders=datamodule.category_test_dataloader(category), verbose=False)
