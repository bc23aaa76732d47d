"""The typed schema of the top-level run configuration (Hydra structured configs).

Every top-level key of ``train.py`` / ``evaluate.py`` and its default lives here, once. ``conf/train.yaml``
lists ``schema: train`` first in its defaults, so Hydra composes the YAML tree onto these dataclasses:

* a key that is not declared here fails at compose time, also inside an experiment or method file
  (``shot: 4`` instead of ``shots: 4`` no longer adds a key nobody reads);
* a value of the wrong type fails at compose time, naming the key (``shots=1.5``, ``overwrite=maybe``);
* code reads ``cfg.overwrite`` instead of ``cfg.get("overwrite", False)``: no second default to disagree.

The config groups (``backbone``, ``method``, ``data``, ...) are open nodes here: their keys are the
constructor arguments of the object each one builds (``_target_``), checked when it is instantiated.

Import this module (the entry points do) before Hydra composes; it registers the schema in Hydra's
ConfigStore and the project's resolvers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

import anomaly_vlm.resolvers  # noqa: F401  (sweep folder resolvers, needed whenever this schema is composed)


@dataclass
class ThresholdConfig:
    """Per-category ok/defect thresholds (``anomaly_vlm.decisions``); defect iff score > threshold."""

    #: ``normal_fpr``: from held-out normal training images (not references); ``f1``: F1-optimal on the
    #: test set (optimistic); ``fixed``: ``image`` and ``pixel`` as given.
    method: str = "normal_fpr"
    #: normal_fpr: at most this fraction of held-out normal images (and pixels) above the threshold.
    target_fpr: float = 0.01
    #: fixed: image-score threshold.
    image: float | None = None
    #: fixed: pixel threshold of the anomaly map.
    pixel: float | None = None
    #: normal_fpr: at most this many held-out normal images per category (0 = all); bounds the extra pass.
    max_holdout: int = 32


@dataclass
class MetricsConfig:
    """Metric variants (recorded in ``results.json`` so tables compare like with like)."""

    #: ``exact``: MVTec's AUPRO; ``official``: the 200-threshold variant of the APRIL-GAN/AnomalyCLIP code.
    aupro: str = "exact"


@dataclass
class TrainConfig:
    """Top-level keys of ``train.py``: build -> fit (when the method is trainable) -> test per category."""

    task_name: str = "train"
    #: Normal reference images per category (0 = zero-shot).
    shots: int = 0
    #: Seeds random init and training (and reference draws unless ``reference_seed`` is set).
    seed: int = 0
    #: Seed of the few-shot reference draws (a method may sweep it under ``-m``).
    reference_seed: int = II("seed")
    #: Few-shot protocol of a method: ``-m`` runs ``reference_seed`` = 0 .. reference_draws-1.
    reference_draws: int = 1
    #: Trained parameters to load before testing.
    ckpt_path: str | None = None
    #: Write ``predictions/`` (scores.csv, maps and masks as the evaluator saw them).
    save_predictions: bool = False
    #: Write ``detectors/<category>/`` (config, text embeddings, references, trained parameters, thresholds).
    save_detector: bool = False
    #: ``accept``: also save (and, with ``mode=predict detector=``, serve) a detector whose scores depend on
    #: the other images scored with it (transductive MuSc); ``refuse``: stop with an error instead.
    detector_set_dependence: str = "refuse"
    #: Heatmap overlay PNGs per category.
    num_overlays: int = 0
    #: Jobs that would train identical parameters share one training (``cache_dir/trained``).
    reuse_trained: bool = True
    #: Jobs of a multirun that run in one process build an identical backbone once (each gets a copy).
    reuse_backbone: bool = True
    #: Allow replacing a finished ``results.json`` (or ``scores.csv``) in the output folder.
    overwrite: bool = False
    #: Multirun folder name; null = the sweep's non-swept overrides (``conf/hydra/default.yaml``).
    sweep_name: str | None = None
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    # Config groups: each node's keys are checked by the object it instantiates.
    backbone: Any = MISSING
    prompts: Any = MISSING
    data: Any = MISSING
    #: Auxiliary dataset of trainable methods (cross-dataset protocol); null for the others.
    train_data: Any = None
    datamodule: Any = MISSING
    logger: Any = None
    trainer: Any = MISSING
    callbacks: Any = None
    feature_cache: Any = None
    method: Any = MISSING
    paths: Any = MISSING


@dataclass
class EvaluateConfig(TrainConfig):
    """Top-level keys of ``evaluate.py``: test (``mode=test``) or score unlabelled images
    (``mode=predict``)."""

    task_name: str = "evaluate"
    #: ``test``: every category of a labelled dataset -> results.json; ``predict``: scores.csv + heatmaps.
    mode: str = "test"
    #: mode=predict: a saved detector folder (``<run dir>/detectors/<category>``); it holds the text
    #: embeddings and references, so no prompts or reference images are read.
    detector: str | None = None
    #: mode=predict: write the heatmap PNG and raw TIFF of every image.
    save_heatmaps: bool = True


def register() -> None:
    """Register the schemas as the ``schema`` group (``train``, ``evaluate``) of the global package."""
    store = ConfigStore.instance()
    store.store(group="schema", name="train", node=TrainConfig, package="_global_")
    store.store(group="schema", name="evaluate", node=EvaluateConfig, package="_global_")


register()
