"""Feeds method outputs to the evaluator and saves what it saw.

Data flow: method fills ``pred_score``/``anomaly_map`` -> this callback -> evaluator (metrics per
category) -> loggers. The callback is the only place that knows both sides.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np

from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.metrics import Evaluator
from anomaly_vlm.reporting.overlays import save_overlay
from anomaly_vlm.reporting.predictions import PredictionWriter

log = logging.getLogger(__name__)


class EvaluationCallback(L.Callback):
    """Collect each test batch, compute a category's metrics when its test epoch ends.

    Under DDP (``trainer=ddp``) every rank scores a contiguous shard of the category; at the end of the
    category rank 0 gathers all shards in rank order and computes the metrics from exactly the samples
    a single process would have seen (no padding, no duplicates). Overlays come from rank 0's shard.

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
        self.num_overlays = num_overlays
        self._overlay_budget: dict[str, int] = {}
        self._shard: list[tuple] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        result: AnomalyBatch = outputs
        category = result.category[0]
        if len(set(result.category)) != 1:
            raise RuntimeError("a test batch mixes categories; test loaders are built per category")
        scores = result.pred_score.detach().float().cpu().numpy()
        labels = result.label.detach().cpu().numpy()
        maps = result.anomaly_map.detach().float().cpu().numpy() if result.anomaly_map is not None else None
        masks = result.mask.detach().cpu().numpy() > 0.5 if result.mask is not None else None
        if trainer.world_size > 1:
            # DDP: keep this rank's shard; rank 0 gathers every shard when the category ends.
            self._shard.append(
                (category, list(result.path), list(result.category), scores, labels, maps, masks)
            )
            if trainer.is_global_zero:
                self._save_overlays(result, maps, masks)
            return
        self._add(category, list(result.path), list(result.category), scores, labels, maps, masks)
        self._save_overlays(result, maps, masks)

    def _add(self, category, paths, categories, scores, labels, maps, masks) -> None:
        self.evaluator.update(category, scores, labels, maps, masks)
        if self.writer is not None:
            self.writer.add(paths, categories, labels, scores, maps, masks)

    def _gather_shards(self, trainer) -> bool:
        """DDP: bring every rank's records to rank 0, in rank order (= the single-process order).

        Returns whether this rank holds the gathered data (rank 0) and must compute the metrics.
        """
        import torch.distributed as dist

        shard, self._shard = self._shard, []
        gathered = [None] * trainer.world_size if trainer.is_global_zero else None
        dist.gather_object(shard, gathered, dst=0)
        if not trainer.is_global_zero:
            return False
        for rank_records in gathered:
            for record in rank_records:
                self._add(*record)
        return True

    def _save_overlays(self, result: AnomalyBatch, maps, masks) -> None:
        if not self.num_overlays or maps is None:
            return
        category = result.category[0]
        budget = self._overlay_budget.setdefault(category, self.num_overlays)
        # Anomalous images are the informative ones; take them first within each batch.
        order = sorted(range(len(result)), key=lambda i: -int(result.label[i]))
        for index in order:
            if budget <= 0:
                break
            target = (
                self.output_dir / "overlays" / category / f"{Path(result.path[index]).parent.name}_"
                f"{Path(result.path[index]).stem}.png"
            )
            save_overlay(
                result.image[index],
                maps[index],
                None if masks is None else masks[index],
                target,
                title=f"{category}/{result.defect_type[index]} score={float(result.pred_score[index]):.3f}",
            )
            budget -= 1
        self._overlay_budget[category] = budget

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        category = pl_module.current_category
        if trainer.world_size > 1 and not self._gather_shards(trainer):
            return  # only rank 0 computes, logs and writes
        stored = self.evaluator.stored_image_scores(category)
        final_scores = np.asarray(pl_module.finalize_image_scores(stored), dtype=np.float64)
        metrics = self.evaluator.compute_category(category, final_scores)
        if self.writer is not None:
            self.writer.finish_category(category, final_scores)
        self.evaluator.release(category)
        if trainer.logger is not None:
            logged = {
                f"test/{category}/{name}": value for name, value in metrics.items() if value is not None
            }
            trainer.logger.log_metrics(logged)
        log.info(
            "%s: %s", category, {k: (round(v, 4) if v is not None else None) for k, v in metrics.items()}
        )
