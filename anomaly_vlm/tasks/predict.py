"""``python evaluate.py mode=predict method=<m> data.path=<image or folder>``: score unlabelled images.

Writes into the run folder:

* ``scores.csv`` -- ``path, category, score`` per image (the method's final image score, after any
  set-level normalisation the method applies over the images of one run);
* ``heatmaps/<name>.png`` -- image | anomaly map blended on the image | the map in colour (each
  min-max scaled per image, title with the score); ``<name>`` is the image's path below the scored
  folder with its extension kept (``a.jpg`` -> ``a.jpg.png``), so ``a.png`` and ``a.jpg`` both keep theirs;
* ``heatmaps/<name>_map.tiff`` -- the raw anomaly map at the model input size (float32, exact values).

Few-shot methods (``shots > 0``) draw their normal references from ``data.reference_dir``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.reporting.overlays import colorize, overlay_panel
from anomaly_vlm.reporting.results import write_json_atomic
from anomaly_vlm.tasks.runner import (
    FinishedRunError,
    _quiet_lightning,
    build,
    clear_stale_artefacts,
    group_choices,
    prepare_job,
)

log = logging.getLogger(__name__)

SCORES_FILE = "scores.csv"
HEATMAP_DIR = "heatmaps"


class FinishedPredictionError(FinishedRunError):
    """The output folder already holds the scores of a finished prediction run."""


def heatmap_name(path: str, root: str) -> str:
    """File-system-safe name of an image relative to the folder it was found in.

    The extension stays in the name (``a.jpg`` -> ``a.jpg``): ``a.png`` and ``a.jpg`` in one folder are
    two images and must not overwrite each other's heatmaps.
    """
    relative = os.path.relpath(path, root) if root != path else Path(path).name
    return relative.replace(os.sep, "__")


class PredictionCollector(L.Callback):
    """Saves heatmaps batch by batch and gathers the raw image scores of a category."""

    def __init__(self, output_dir: Path, root: str, save_heatmaps: bool = True) -> None:
        self.heatmap_dir = output_dir / HEATMAP_DIR
        self.root = root
        self.save_heatmaps = save_heatmaps
        self.paths: list[str] = []
        self.scores: list[float] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        scores = outputs.pred_score.detach().float().cpu().numpy()
        maps = outputs.anomaly_map.detach().float().cpu().numpy()
        for index, path in enumerate(outputs.path):
            self.paths.append(path)
            self.scores.append(float(scores[index]))
            if not self.save_heatmaps:
                continue
            name = heatmap_name(path, self.root)
            image = outputs.image[index].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
            image = (image * 255).astype(np.uint8)
            # image | blended heatmap | the map alone, so faint structure under the blend stays visible.
            panel = np.concatenate([overlay_panel(image, maps[index], None), colorize(maps[index])], axis=1)
            canvas = Image.new("RGB", (panel.shape[1], panel.shape[0] + 14), "white")
            canvas.paste(Image.fromarray(panel), (0, 14))
            ImageDraw.Draw(canvas).text((2, 1), f"{Path(path).name} score={scores[index]:.4f}", fill="black")
            self.heatmap_dir.mkdir(parents=True, exist_ok=True)
            canvas.save(self.heatmap_dir / f"{name}.png")
            raw_map = Image.fromarray(maps[index].astype(np.float32), mode="F")
            raw_map.save(self.heatmap_dir / f"{name}_map.tiff")

    def take(self) -> tuple[list[str], list[float]]:
        paths, scores = self.paths, self.scores
        self.paths, self.scores = [], []
        return paths, scores


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


def predict(cfg: DictConfig) -> None:
    """Score the images of ``cfg.data`` (any source; its test split, labels ignored)."""
    _quiet_lightning()
    output_dir = Path(cfg.paths.output_dir)
    scores_path = output_dir / SCORES_FILE
    if scores_path.exists() and not bool(cfg.get("overwrite", False)):
        raise FinishedPredictionError(
            f"{scores_path} already holds the scores of a finished prediction; refusing to overwrite it. "
            "Choose another output folder or pass overwrite=true."
        )
    if bool(cfg.get("overwrite", False)):
        clear_stale_artefacts(output_dir)  # heatmaps of images no longer scored would look current
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    # Cheap checks first: the images exist and decode their headers, references, shots.
    source = build(cfg.data)
    datamodule: AnomalyDataModule = build(cfg.datamodule, source=source)
    categories = datamodule.categories
    job = prepare_job(cfg, datamodule, (source,), output_dir, group_choices(cfg)["method"], fit=False)
    method, references, shots = job.method, job.references, job.shots

    rows: list[tuple[str, str, float]] = []
    for category in categories:
        test_paths = [sample.path for sample in source.samples(category, "test")]
        root = os.path.commonpath(test_paths) if len(test_paths) > 1 else str(Path(test_paths[0]).parent)
        collector = PredictionCollector(output_dir, root, bool(cfg.get("save_heatmaps", True)))
        trainer: L.Trainer = build(cfg.trainer, logger=False, callbacks=[collector])
        label_progress_as_predicting(trainer)
        reference_images = datamodule.load_images(references[category]) if references[category] else None
        method.prepare_category(category, reference_images)
        trainer.test(method, dataloaders=datamodule.category_test_dataloader(category), verbose=False)
        paths, raw = collector.take()
        final = np.asarray(method.finalize_image_scores(np.asarray(raw, dtype=np.float64)), dtype=np.float64)
        rows += [(path, category, float(score)) for path, score in zip(paths, final, strict=True)]

    output_dir.mkdir(parents=True, exist_ok=True)
    temporary = scores_path.with_name(f".{SCORES_FILE}.{os.getpid()}.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "category", "score"])
        writer.writerows((path, category, f"{score:.8g}") for path, category, score in rows)
    os.replace(temporary, scores_path)
    write_json_atomic(
        output_dir / "predict.json",
        {"num_images": len(rows), "shots": shots, "seed": int(cfg.seed), "categories": categories},
    )
    print(f"scored {len(rows)} images: {scores_path}")
    print(f"heatmaps: {output_dir / HEATMAP_DIR}")
