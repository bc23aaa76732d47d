"""Metrics of a finished category, and what the evaluator saw, saved on request.

Data flow: the evaluation path (:mod:`anomaly_vlm.callbacks.scoring`) finishes a category ->
:class:`CategoryEvaluation` -> evaluator (metrics per category) -> loggers. This is the only place
that knows both the predictions and the metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from anomaly_vlm.callbacks.scoring import CategoryResult
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.reporting.overlays import save_overlay
from anomaly_vlm.reporting.predictions import PredictionWriter

log = logging.getLogger(__name__)

#: Images handed to the evaluator per call: bounds its temporaries, the metrics do not depend on it.
EVALUATOR_CHUNK = 32


class CategoryEvaluation:
    """Compute a finished category's metrics, log them, and save predictions and overlays on request.

    Args:
        evaluator: the metric evaluator.
        output_dir: run folder; predictions and overlays go below it.
        save_predictions: write ``predictions/`` (scores.csv and per-category npz of maps and masks).
        num_overlays: heatmap overlay PNGs per category (anomalous images first); 0 disables.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        output_dir: str | Path,
        save_predictions: bool = False,
        num_overlays: int = 0,
    ) -> None:
        self.evaluator = evaluator
        self.output_dir = Path(output_dir)
        self.writer = PredictionWriter(self.output_dir / "predictions") if save_predictions else None
        self.num_overlays = int(num_overlays)

    @property
    def images_wanted(self) -> int:
        return self.num_overlays

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        category = result.category
        scores = result.prediction.image_score.double().numpy()
        maps = result.prediction.anomaly_map.numpy()
        masks = None if result.masks is None else result.masks.numpy()
        labels = result.labels.numpy()
        for start in range(0, len(result), EVALUATOR_CHUNK):
            part = slice(start, start + EVALUATOR_CHUNK)
            self.evaluator.update(
                category, scores[part], labels[part], maps[part], None if masks is None else masks[part]
            )
        metrics = self.evaluator.compute_category(category)
        if self.writer is not None:
            self.writer.add(
                result.paths, [category] * len(result), labels, scores, maps, masks, result.defect_types
            )
            self.writer.finish_category(category, scores)
        self.evaluator.release(category)
        self._save_overlays(result)
        if trainer.logger is not None:
            logged = {
                f"test/{category}/{name}": value for name, value in metrics.items() if value is not None
            }
            trainer.logger.log_metrics(logged)
        log.info(
            "%s: %s", category, {k: (None if v is None else round(float(v), 4)) for k, v in metrics.items()}
        )

    def _save_overlays(self, result: CategoryResult) -> None:
        for index, image in list(result.images.items())[: self.num_overlays]:
            path = Path(result.paths[index])
            mask = None if result.masks is None else result.masks[index].numpy()
            save_overlay(
                image,
                result.prediction.anomaly_map[index].numpy(),
                mask,
                self.output_dir / "overlays" / result.category / f"{path.parent.name}_{path.stem}.png",
                title=f"{result.category}/{result.defect_types[index]} "
                f"score={float(result.prediction.image_score[index]):.3f}",
            )
