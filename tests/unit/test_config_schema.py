"""The typed top-level schema (anomaly_vlm/config.py): defaults in one place, typos fail at compose."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from composed import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from anomaly_vlm.config import EvaluateConfig, TrainConfig

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(name: str, *overrides: str):
    return compose_config(name, overrides)


def test_entry_configs_compose_onto_the_schema():
    assert OmegaConf.get_type(_compose("train")) is TrainConfig
    evaluate = _compose("evaluate")
    assert OmegaConf.get_type(evaluate) is EvaluateConfig
    assert (evaluate.task_name, evaluate.mode, evaluate.detector) == ("evaluate", "test", None)
    predict = _compose("evaluate", "mode=predict")
    assert (predict.task_name, predict.mode) == ("predict", "predict")


def test_defaults_live_in_the_schema_only():
    """train.yaml and evaluate.yaml hold defaults lists only: no top-level value for a second default."""
    for name in ("train.yaml", "evaluate.yaml"):
        assert set(yaml.safe_load((CONF / name).read_text())) == {"defaults"}, name
    cfg = _compose("train")
    schema = OmegaConf.structured(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if OmegaConf.is_missing(schema, field.name) or field.name in {"logger", "callbacks", "feature_cache"}:
            continue  # config groups: filled by their files
        expected = OmegaConf.select(schema, field.name)
        assert OmegaConf.select(cfg, field.name) == expected, field.name


def test_reference_seed_follows_seed_unless_set():
    assert _compose("train", "seed=7").reference_seed == 7
    assert _compose("train", "seed=7", "reference_seed=2").reference_seed == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("shot=4", "Could not override 'shot'"),
        ("threshold.methd=f1", "Could not override 'threshold.methd'"),
        ("overwrite=maybe", "Error merging override overwrite=maybe"),
        ("threshold.target_fpr=low", "Error merging override threshold.target_fpr=low"),
        ("num_overlays=2.5", "Error merging override num_overlays=2.5"),
    ],
)
def test_typos_and_wrong_types_fail_at_compose(override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        _compose("train", override)


def test_a_typo_inside_a_config_file_fails_at_compose(tmp_path):
    """Before the schema, ``shot: 4`` in an experiment file added a key nobody read."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text("# @package _global_\nshot: 4\n")
    with pytest.raises(ConfigCompositionException, match="experiment/typo") as error:
        _compose("train", f"hydra.searchpath=[file://{tmp_path}]", "experiment=typo")
    assert "Key 'shot' not in 'TrainConfig'" in str(error.value)


@pytest.mark.parametrize("group", ["method", "experiment", "mode"])
def test_every_global_config_file_fits_the_schema(group):
    """Method, experiment and mode files write top-level keys: each must be one the schema declares."""
    name = "evaluate" if group == "mode" else "train"
    for path in sorted((CONF / group).glob("*.yaml")):
        cfg = _compose(name, f"{group}={path.stem}")
        assert OmegaConf.get_type(cfg) in (TrainConfig, EvaluateConfig), path.name


def test_shared_compositions_are_the_compositions_hydra_makes(tmp_path, monkeypatch):
    """``tests/composed.py`` composes each set of config-group choices once and applies the value
    overrides to a copy with Hydra's own function: its configs equal fresh ones and are the caller's own."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    # Group choices the tests above compose too, so only the fresh compositions are extra.
    cases = [
        ("train", ["experiment=aprillab_synthetic", "shots=4", "method.stages=[2,4]"]),
        ("train", ["method=aprillab", "+trainer.enable_progress_bar=false", "data.categories=[disc]"]),
        ("evaluate", ["mode=predict", "seed=3"]),
    ]
    for name, overrides in cases:
        shared = compose_config(name, overrides)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            fresh = compose(name, overrides=overrides)
        assert repr(shared) == repr(fresh), overrides  # values, interpolations unresolved
        assert OmegaConf.get_type(shared) is OmegaConf.get_type(fresh) and OmegaConf.is_struct(shared)
        shared.seed = 99
        assert compose_config(name, overrides).seed == fresh.seed
    hydra_node = compose_config("train", ["method=aprillab", "shots=4"], hydra=True).hydra
    assert list(hydra_node.overrides.task) == ["method=aprillab", "shots=4"]
    assert hydra_node.runtime.cwd == str(tmp_path)
