"""``evaluate.py mode=predict detector=<folder> data.path=...``: score images with a saved detector.

No dataset, references or prompts are read: the detector holds them. The outputs are those of any
prediction run (``scores.csv`` with decisions, heatmaps, masks). ``backbone.precision=`` on the command
line runs the detector's backbone in that precision (its weights are still checked as saved).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from anomaly_vlm.callbacks.scoring import CategoryResult
from anomaly_vlm.data.checks import check_samples
from anomaly_vlm.data.datasets.base import DatasetSource
from anomaly_vlm.data.image_io import load_image
from anomaly_vlm.decisions.consumers import CategoryDecisions
from anomaly_vlm.decisions.outputs import DecisionWriter
from anomaly_vlm.decisions.thresholds import ThresholdSettings
from anomaly_vlm.deploy.detector import Detector, check_set_dependence


def command_line_precision(cfg: DictConfig) -> str | None:
    """``backbone.precision`` when the command line sets it, else None (the detector's own precision):
    the composed config always holds a value, the default backbone's, which is not the user's choice."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    for override in HydraConfig.get().overrides.task:
        if override.partition("=")[0].lstrip("+~") == "backbone.precision":
            return str(cfg.backbone.precision)
    return None


def predict_with_detector(
    cfg: DictConfig,
    settings: ThresholdSettings,
    source: DatasetSource,
    heatmaps,
    mask_dir: Path,
    name_of: Callable[[str, list[str]], str],
) -> DecisionWriter:
    """Score every image of ``source``'s test split with the detector of ``cfg.detector``.

    The detector's thresholds decide, unless ``threshold.method=fixed`` gives others. Returns the
    decision writer (its ``thresholds`` and ``decisions``; ``shots`` and the backbone ``precision`` that
    ran are set on it for the run record).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accept = check_set_dependence(str(cfg.detector_set_dependence))
    detector = Detector.load(
        str(cfg.detector), device=device, set_dependence=accept, precision=command_line_precision(cfg)
    )
    if detector.precision is not None:
        print(f"backbone precision: {detector.precision['resolved']} ({detector.precision['reason']})")
    thresholds = detector.thresholds
    if settings.method == "fixed":
        thresholds = CategoryDecisions(settings).category_thresholds_fixed()
    writer = DecisionWriter({detector.category: thresholds} if thresholds else {}, mask_dir, name_of)
    writer.shots = int(detector.meta.get("shots", 0))
    writer.precision = detector.precision
    batch_size = int((cfg.get("datamodule") or {}).get("batch_size", 8))
    for category in source.categories:
        samples = source.samples(category, "test")
        # Headers first, against data.max_image_pixels: the detector reads with the default limit.
        check_samples(samples, source.max_image_pixels)
        paths = [sample.path for sample in samples]
        prediction = detector.score_paths(paths, batch_size=batch_size)
        images = {}
        if heatmaps.images_wanted is None:
            size = detector.image_size
            images = {
                index: (
                    load_image(path, size, source.max_image_pixels).permute(1, 2, 0).numpy() * 255
                ).astype(np.uint8)
                for index, path in enumerate(paths)
            }
        result = CategoryResult(
            category=detector.category,
            paths=paths,
            defect_types=["unknown"] * len(paths),
            labels=torch.full((len(paths),), -1),
            masks=None,
            prediction=prediction.to("cpu"),
            images=images,
        )
        heatmaps.consume(result, None)
        writer.consume(result, None)
    return writer
