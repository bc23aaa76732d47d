"""Which config values make two runs different configurations in the tables, and which never do.

Every top-level key of a run's config is classified once, here: it either can change a number the tables
and analyses report (a metric of ``results.json``), or it is *neutral* (where outputs go, caches, logging,
deployment switches, decision thresholds, limits on input files): two runs that differ only in neutral
keys and replicate seeds are one configuration, one row. ``tests/unit/reporting/test_identity.py`` checks
that every key of the config schema (``anomaly_vlm/config.py``) is classified, so a new key forces a
decision.

The list differs from what resumption excludes from the training fingerprint (``tasks/resume.py``): the
evaluated data and the shots do not change trained parameters, but they change every number here.
"""

from __future__ import annotations

import json
from typing import Any

#: The replicates of one configuration: averaged over (mean ± std), never a row of their own.
REPLICATE_KEYS: tuple[str, ...] = ("seed", "reference_seed")

#: Config keys that follow ``seed`` (``${seed}`` in their config files): they vary with the replicates.
SEED_FOLLOWERS: tuple[str, ...] = (
    "backbone.seed",  # random weights of the test architectures
    "datamodule.seed",  # training order and mosaics
    "train_data.synthesis.seed",  # synthesized defects (also while synthesis is off)
    "method.seed",  # prompt initialisation (PromptAD)
)

#: Top-level keys whose whole subtree never changes a reported number, and why.
NEUTRAL_KEYS: dict[str, str] = {
    "task_name": "train.py or evaluate.py: the method, data and parameters decide the numbers",
    "mode": "evaluate.py test or predict; only test writes results.json",
    "reference_draws": "how many draws -m runs; each job is one reference_seed",
    "save_predictions": "output file switch",
    "save_detector": "deployment switch",
    "detector_set_dependence": "deployment switch",
    "detector": "mode=predict input (no metrics)",
    "save_heatmaps": "mode=predict output switch",
    "num_overlays": "output file switch",
    "reuse_trained": "shares identical trainings between jobs (same parameters)",
    "reuse_backbone": "shares an identical backbone between jobs (same weights)",
    "overwrite": "output file switch",
    "sweep_name": "output folder",
    "threshold": "ok/defect decisions; the tables report threshold-free ranking metrics",
    "logger": "logging",
    "callbacks": "efficiency probe settings (measurements, not metrics)",
    "paths": "input and output folders",
    # Written into the config of runs by older versions of the package.
    "names": "the names results.json also records at its top level",
    "hydra": "Hydra's own settings",
}

#: Top-level keys that can change the numbers, each with the sub-keys below it that cannot.
COUNTED_KEYS: dict[str, tuple[str, ...]] = {
    "shots": (),
    "ckpt_path": (),  # the trained parameters a job tested
    "metrics": (),  # metric variants (metrics.aupro)
    "backbone": ("cache_dir",),  # where weights are downloaded to
    "prompts": (),
    # data.root is where a benchmark lies, except for datasets of your own (see OWN_DATA_READERS).
    "data": ("root", "max_image_pixels"),
    "train_data": ("root", "max_image_pixels", "synthesis.max_image_pixels"),
    # The test loader's batch size: every method scores a category's images independently of the
    # batching (set-level steps run on the whole category).
    "datamodule": ("batch_size", "num_workers"),
    "trainer": (
        "default_root_dir",
        "logger",
        "callbacks",
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "enable_checkpointing",
        "num_sanity_val_steps",
    ),
    # Exact (float32) cached features are the features; only feature_cache.dtype rounds them.
    "feature_cache": ("_target_", "enabled", "dir", "max_gb"),
    # Memory bounds of a computation whose result they do not change.
    "method": ("block_bytes", "window_batch_size"),
}

#: Dataset readers of your own images (``data=folder``, ``data=meta_json``, ``data=images``: their config
#: has no default root). Their results.json name is the reader's, so the root is what tells two of these
#: datasets apart, and it splits rows; a benchmark's root is only where its fixed release lies.
OWN_DATA_READERS: tuple[str, ...] = ("FolderDataset", "MetaJSON", "ImageFiles")


def _under(key: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def reads_own_data(node: Any) -> bool:
    """Whether a ``data`` / ``train_data`` config node builds a reader of your own images."""
    target = str((node or {}).get("_target_") or "") if isinstance(node, dict) else ""
    return target.rsplit(".", 1)[-1] in OWN_DATA_READERS


def uses_prompts(run: dict) -> bool:
    """Whether the run's method reads a prompt set (``uses_prompts`` in results.json; MuSc does not)."""
    return run.get("uses_prompts", True) is not False


def neutral(key: str, run: dict) -> bool:
    """Whether a flattened config key (``data.root``) of ``run`` can never change a reported number.

    Keys under :data:`NEUTRAL_KEYS`, the listed sub-keys of :data:`COUNTED_KEYS`, replicate seeds and
    their followers, and the prompt set of a method that reads none. Keys of no known top-level group
    count (a row too many is visible; two configurations averaged into one row are not).
    """
    top = key.split(".", 1)[0]
    if top in NEUTRAL_KEYS or _under(key, REPLICATE_KEYS) or _under(key, SEED_FOLLOWERS):
        return True
    if top == "prompts" and not uses_prompts(run):
        return True
    sub = key[len(top) + 1 :]
    if not sub or not _under(sub, COUNTED_KEYS.get(top, ())):
        return False
    if sub == "root" and top in ("data", "train_data"):
        return not reads_own_data((run.get("config") or {}).get(top))
    return True


#: Classes that moved, from the ``_target_`` runs of older versions recorded to today's: a run from before
#: a move and one after it are one configuration.
MOVED_TARGETS: dict[str, str] = {
    "anomaly_vlm.data.mvtec.MVTecAD": "anomaly_vlm.data.datasets.MVTecAD",
    "anomaly_vlm.data.visa.VisA": "anomaly_vlm.data.datasets.VisA",
    "anomaly_vlm.data.folder.FolderDataset": "anomaly_vlm.data.datasets.FolderDataset",
    "anomaly_vlm.data.images.ImageFiles": "anomaly_vlm.data.datasets.ImageFiles",
    "anomaly_vlm.data.synthetic.SyntheticAD": "anomaly_vlm.data.datasets.SyntheticAD",
    "anomaly_vlm.data.synthesis.AnomalySynthesizer": "anomaly_vlm.data.defect_synthesis.AnomalySynthesizer",
}


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"data.categories": "['a', 'b']", ...}``: every leaf of a run's config as text (moved
    ``_target_`` classes by today's path, :data:`MOVED_TARGETS`)."""
    if isinstance(config, dict):
        flat: dict[str, str] = {}
        for key, value in config.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    if prefix.endswith("_target_.") and isinstance(config, str):
        config = MOVED_TARGETS.get(config, config)
    return {prefix[:-1]: json.dumps(config, sort_keys=True, default=str)}


#: Config keys added to the configs later, with the value every run recorded before them ran with: that
#: value counts as absent, so a run from before the key and one after it are one configuration.
ADDED_KEYS: dict[str, str] = {"backbone.precision": json.dumps("fp32")}


def config_fields(run: dict) -> dict[str, str]:
    """The config values of a run that can make it a different configuration (flattened, as JSON text)."""
    config = run.get("config") or {}
    output_dir = str((config.get("paths") or {}).get("output_dir") or "") or None
    return {
        key: value
        for key, value in flatten_config(config).items()
        # Any other value naming the job's own folder is per job by construction.
        if not neutral(key, run) and not (output_dir and output_dir in value) and ADDED_KEYS.get(key) != value
    }
