"""``python evaluate.py mode=predict method=<m> data.path=<image or folder>``: score unlabelled images.

Writes into the run folder:

* ``scores.csv`` -- ``path, category, score`` per image (the method's final image score, after the
  set-level post-processing the method declares over the images of a category, as in testing);
* ``heatmaps/<name>.png`` -- image | anomaly map blended on the image | the map in colour (each
  min-max scaled per image, title with the score); ``<name>`` is the image's path below the scored
  folder with its extension kept (``a.jpg`` -> ``a.jpg.png``), so ``a.png`` and ``a.jpg`` both keep theirs;
* ``heatmaps/<name>_map.tiff`` -- the raw anomaly map at the model input size (float32, exact values);
* ``masks/<name>.png`` -- the binary defect mask (map above the pixel threshold), when a pixel
  threshold is known.

``scores.csv`` also holds each image's ``decision`` (``ok``/``defect``, image score above the image
threshold) and ``defect_area`` (fraction of map pixels above the pixel threshold). The thresholds come
from ``threshold.method``: ``fixed`` (``threshold.image``/``threshold.pixel``), or ``normal_fpr`` from
the normal images of ``data.reference_dir`` that are not references; without either the two columns
stay empty.

Few-shot methods (``shots > 0``) draw their normal references from ``data.reference_dir``.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from anomaly_vlm.callbacks.scoring import CategoryResult, CategoryScoring
from anomaly_vlm.data import AnomalyDataModule, DataError
from anomaly_vlm.decisions import ThresholdError, ThresholdSettings
from anomaly_vlm.decisions.consumers import CategoryDecisions
from anomaly_vlm.decisions.outputs import MASK_DIR, DecisionWriter
from anomaly_vlm.reporting.overlays import colorize, overlay_panel
from anomaly_vlm.reporting.results import write_json_atomic
from anomaly_vlm.tasks.categories import score_categories
from anomaly_vlm.tasks.config_checks import check_config, raise_first
from anomaly_vlm.tasks.construction import (
    feature_cache_report,
    group_choices,
    prepare_job,
    print_feature_cache_summary,
    quiet_lightning,
)
from anomaly_vlm.tasks.errors import FinishedPredictionError
from anomaly_vlm.tasks.heldout import heldout_thresholds
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.outputs import clear_stale_artefacts
from anomaly_vlm.wording import counted

log = logging.getLogger(__name__)

SCORES_FILE = "scores.csv"
HEATMAP_DIR = "heatmaps"


def category_root(paths: list[str]) -> str:
    """The folder a category's scored images are named relative to."""
    return os.path.commonpath(paths) if len(paths) > 1 else str(Path(paths[0]).parent)


def heatmap_name(path: str, root: str) -> str:
    """File-system-safe name of an image relative to the folder it was found in.

    The extension stays in the name (``a.jpg`` -> ``a.jpg``): ``a.png`` and ``a.jpg`` in one folder are
    two images and must not overwrite each other's heatmaps.
    """
    relative = os.path.relpath(path, root) if root != path else Path(path).name
    return relative.replace(os.sep, "__")


class HeatmapWriter:
    """Saves a finished category's heatmaps and keeps its final image scores for ``scores.csv``.

    Args:
        output_dir: run folder; heatmaps go to ``heatmaps/``.
        save_heatmaps: write the heatmap PNG and raw TIFF of every image.
    """

    def __init__(self, output_dir: Path, save_heatmaps: bool = True) -> None:
        self.heatmap_dir = output_dir / HEATMAP_DIR
        self.save_heatmaps = save_heatmaps
        self.rows: list[tuple[str, str, float]] = []

    @property
    def images_wanted(self) -> int | None:
        return None if self.save_heatmaps else 0

    def consume(self, result: CategoryResult, trainer: L.Trainer) -> None:
        scores = result.prediction.image_score.double().numpy()
        self.rows += [
            (path, result.category, float(score)) for path, score in zip(result.paths, scores, strict=True)
        ]
        if not self.save_heatmaps:
            return
        root = category_root(result.paths)
        maps = result.prediction.anomaly_map.numpy()
        self.heatmap_dir.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(result.paths):
            name = heatmap_name(path, root)
            image = result.images[index]
            # image | blended heatmap | the map alone, so faint structure under the blend stays visible.
            panel = np.concatenate([overlay_panel(image, maps[index], None), colorize(maps[index])], axis=1)
            canvas = Image.new("RGB", (panel.shape[1], panel.shape[0] + 14), "white")
            canvas.paste(Image.fromarray(panel), (0, 14))
            ImageDraw.Draw(canvas).text((2, 1), f"{Path(path).name} score={scores[index]:.4f}", fill="black")
            canvas.save(self.heatmap_dir / f"{name}.png")
            raw_map = Image.fromarray(maps[index].astype(np.float32), mode="F")
            raw_map.save(self.heatmap_dir / f"{name}_map.tiff")


def label_progress_as_predicting(trainer: L.Trainer) -> None:
    """Say "Predicting" instead of "Testing" on the progress bar: prediction runs Lightning's test loop.

    The bar (rich or tqdm, whichever Lightning chose) gets a subclass of its own class that only renames
    the test stage, so its behaviour is otherwise unchanged.
    """
    bar = trainer.progress_bar_callback
    if bar is None:
        return
    base = type(bar)
    attributes: dict = {"test_description": property(lambda self: "Predicting")}
    if isinstance(bar, TQDMProgressBar):
        # tqdm's bar is created with a literal "Testing" rather than test_description.
        def init_test_tqdm(self):
            progress = base.init_test_tqdm(self)
            progress.set_description("Predicting")
            return progress

        attributes["init_test_tqdm"] = init_test_tqdm
    bar.__class__ = type(f"Predicting{base.__name__}", (base,), attributes)


def prediction_thresholds(cfg, settings, method, datamodule, references) -> dict:
    """Per category, the thresholds of the decisions; empty when none can be known.

    ``fixed`` gives them; ``normal_fpr`` scores the normal images of ``data.reference_dir`` that are not
    references. Unlabelled images cannot choose an ``f1`` threshold.
    """
    if settings.method == "fixed":
        chooser = CategoryDecisions(settings)
        return {category: chooser.category_thresholds_fixed() for category in datamodule.categories}
    if settings.method == "f1":
        raise ThresholdError(
            "threshold.method=f1 needs labelled images; mode=predict scores unlabelled ones "
            "(use threshold.method=normal_fpr with data.reference_dir, or threshold.method=fixed)"
        )
    try:
        for category in datamodule.categories:
            datamodule.source.samples(category, "train")
    except DataError:
        log.warning(
            "no threshold: the decision and defect_area columns stay empty (set data.reference_dir to "
            "normal images for threshold.method=normal_fpr, or threshold.method=fixed threshold.image=...)"
        )
        return {}
    return heldout_thresholds(
        functools.partial(build, cfg.trainer, logger=False), method, datamodule, references, settings
    )


def write_scores(scores_path: Path, rows: list[tuple[str, str, float]], decisions: dict) -> None:
    """``scores.csv`` (path, category, score, decision, defect area), written atomically: a killed run
    never leaves a half file that a re-run would take for a finished prediction."""
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = scores_path.with_name(f".{SCORES_FILE}.{os.getpid()}.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "category", "score", "decision", "defect_area"])
        for path, category, score in rows:
            decision = decisions.get(path)
            area = "" if decision is None or decision.defect_area is None else f"{decision.defect_area:.6g}"
            writer.writerow(
                [path, category, f"{score:.8g}", "" if decision is None else decision.decision, area]
            )
    os.replace(temporary, scores_path)


def backbone_precision(method) -> dict[str, str] | None:
    """The method's backbone precision record (requested, resolved, reason), None without one."""
    record = getattr(getattr(method, "backbone", None), "precision_record", None)
    return record() if callable(record) else None


def predict(cfg: DictConfig) -> None:
    """Score the images of ``cfg.data`` (any source; its test split, labels ignored)."""
    quiet_lightning()
    output_dir = Path(cfg.paths.output_dir)
    scores_path = output_dir / SCORES_FILE
    if scores_path.exists() and not cfg.overwrite:
        raise FinishedPredictionError(
            f"{scores_path} already holds the scores of a finished prediction; refusing to overwrite it. "
            "Choose another output folder or pass overwrite=true."
        )
    if cfg.overwrite:
        clear_stale_artefacts(output_dir)  # heatmaps of images no longer scored would look current
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    # Cheap checks first: the images exist and decode their headers, references, shots.
    settings = ThresholdSettings.from_config(cfg.threshold)
    source = build(cfg.data)
    heatmaps = HeatmapWriter(output_dir, cfg.save_heatmaps)
    name_of = lambda path, paths: heatmap_name(path, category_root(paths))  # noqa: E731
    method = None  # a saved detector carries its own model and encodes without the feature cache
    if cfg.detector:
        from anomaly_vlm.tasks.predict_detector import predict_with_detector

        decisions = predict_with_detector(cfg, settings, source, heatmaps, output_dir / MASK_DIR, name_of)
        thresholds, shots, categories = decisions.thresholds, decisions.shots, list(decisions.thresholds)
        precision = decisions.precision
    else:
        names = group_choices(cfg)
        raise_first(check_config(cfg, names, fit=False))
        datamodule: AnomalyDataModule = build(cfg.datamodule, source=source)
        categories = datamodule.categories
        job = prepare_job(cfg, datamodule, (source,), output_dir, names["method"], fit=False)
        method, shots = job.method, job.shots
        precision = backbone_precision(method)

        thresholds = prediction_thresholds(cfg, settings, method, datamodule, job.references)
        decisions = DecisionWriter(thresholds, output_dir / MASK_DIR, name_of)
        scoring = CategoryScoring([heatmaps, decisions])
        trainer: L.Trainer = build(cfg.trainer, logger=False, callbacks=[scoring])
        label_progress_as_predicting(trainer)
        score_categories(trainer, method, datamodule, scoring, job.references)
    rows = heatmaps.rows
    write_scores(scores_path, rows, decisions.decisions)
    write_json_atomic(
        output_dir / "predict.json",
        {
            "num_images": len(rows),
            "shots": shots,
            "seed": int(cfg.seed),
            "categories": categories,
            "thresholds": {category: chosen.to_dict() for category, chosen in thresholds.items()},
            # The backbone precision that ran: requested, resolved, why (a detector's own unless overridden).
            "precision": precision,
        },
    )
    print(f"scored {counted(len(rows), 'image')}: {scores_path}")
    print(f"heatmaps: {output_dir / HEATMAP_DIR}")
    if method is not None:
        feature_cache_report(method)  # keeps the cache under its size limit
        print_feature_cache_summary(method)
