"""Every config key either can change a reported number or is neutral; neutral keys never split rows."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path

import lightning
import pytest
from composed import compose_config
from omegaconf import OmegaConf

from anomaly_vlm.config import EvaluateConfig, TrainConfig
from anomaly_vlm.reporting import identity, tables
from anomaly_vlm.reporting.results import write_json_atomic


def _compose(name: str, *overrides: str) -> dict:
    # compose_config: the seeds and paths are value overrides, so the configs of one experiment share one
    # composition.
    cfg = compose_config(name, ["paths.output_dir=job", "logger=none", *overrides])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.fixture(scope="module")
def demo_config() -> dict:
    return _compose("evaluate", "experiment=demo")


def test_every_schema_key_is_classified_once() -> None:
    keys = {f.name for schema in (TrainConfig, EvaluateConfig) for f in dataclasses.fields(schema)}
    classes = [set(identity.NEUTRAL_KEYS), set(identity.COUNTED_KEYS), set(identity.REPLICATE_KEYS)]
    unclassified = keys - set().union(*classes)
    assert not unclassified, f"decide whether these change reported numbers: {sorted(unclassified)}"
    assert not any(a & b for i, a in enumerate(classes) for b in classes[i + 1 :])


def test_listed_neutral_sub_keys_exist() -> None:
    """A typo in a listed sub-key would silently let that key split rows again."""
    configs = [
        _compose("evaluate", "experiment=demo"),
        _compose("train", "experiment=aprillab_synthetic"),
        _compose("train", "experiment=promptad_synthetic", "method=musc"),
        _compose("train", "experiment=promptad_synthetic"),
        _compose("train", "experiment=demo", "method=winclip"),
    ]
    present = {key for config in configs for key in identity.flatten_config(config)}
    # Trainer arguments the task sets (or a user adds with +trainer.<key>=...) are not in the config files.
    present |= {f"trainer.{name}" for name in inspect.signature(lightning.Trainer).parameters}
    listed = [f"{top}.{sub}" for top, subs in identity.COUNTED_KEYS.items() for sub in subs]
    missing = [key for key in listed if not any(k == key or k.startswith(key + ".") for k in present)]
    assert not missing


@pytest.mark.parametrize("experiment", ["demo", "aprillab_synthetic", "promptad_synthetic"])
def test_only_replicate_keys_follow_the_seed(experiment: str) -> None:
    runs = [{"config": _compose("train", f"experiment={experiment}", f"seed={seed}")} for seed in (3, 4)]
    assert identity.config_fields(runs[0]) == identity.config_fields(runs[1])


def _result(folder: Path, config: dict, seed: int = 0, created: str = "2026-01-01T00:00:00", **extra) -> Path:
    config = {**copy.deepcopy(config), "seed": seed}
    payload = {
        "status": "complete",
        "method": "clip",
        "backbone": "tiny",
        "prompts": "two_prompt",
        "dataset": extra.pop("dataset", "synthetic"),
        "shots": 0,
        "seed": seed,
        "metrics": {
            "mean": {"image_auroc": 0.5 + 0.01 * seed},
            "per_category": {"disc": {"image_auroc": 0.5}},
        },
        "created": created,
        "config": config,
        **extra,
    }
    return write_json_atomic(folder / "results.json", payload)


def _set(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


def test_train_evaluate_and_demo_runs_differing_in_neutral_keys_are_one_row(demo_config, tmp_path) -> None:
    """The report's case: train.py, evaluate.py and the README's save_detector run of one CLIP config."""
    train = _compose("train", "experiment=demo")
    train = _set(_set(train, "feature_cache.dir", "/elsewhere/features"), "paths.cache_dir", "/elsewhere")
    demo = _set(_set(demo_config, "save_detector", True), "num_overlays", 3)
    others = [
        _set(demo_config, "data.max_image_pixels", 5),
        _set(_set(demo_config, "threshold.method", "f1"), "threshold.max_holdout", 0),
        _set(_set(demo_config, "datamodule.num_workers", 3), "datamodule.batch_size", 2),
        _set(_set(demo_config, "trainer.enable_progress_bar", False), "logger", {"_target_": "x"}),
        _set(_set(demo_config, "feature_cache.enabled", False), "reuse_backbone", False),
        _set(demo_config, "data.root", "/another/copy/of/synthetic"),
    ]
    for seed, config in enumerate([train, demo_config, demo, *others]):
        _result(tmp_path / f"run{seed}", config, seed=seed)
    (group,) = tables.collect([tmp_path])
    assert group.method_label == "clip" and len(group.seeds) == 9


@pytest.mark.parametrize(
    "key,value",
    [("feature_cache.dtype", "float16"), ("metrics.aupro", "official"), ("method.logit_scale", 10.0)],
)
def test_keys_that_change_numbers_split_rows(demo_config, tmp_path, key, value) -> None:
    _result(tmp_path / "a", demo_config)
    _result(tmp_path / "b", _set(demo_config, key, value))
    groups = tables.collect([tmp_path])
    assert len(groups) == 2 and any(key in group.method_label for group in groups)


def test_backbone_precision_fp32_is_the_configuration_of_runs_recorded_before_the_key(demo_config):
    run = {"config": copy.deepcopy(demo_config)}
    before = copy.deepcopy(run)
    before["config"]["backbone"].pop("precision", None)
    run["config"]["backbone"]["precision"] = "fp32"
    assert identity.config_fields(run) == identity.config_fields(before)
    run["config"]["backbone"]["precision"] = "amp-bf16"
    assert identity.config_fields(run)["backbone.precision"] == '"amp-bf16"'
