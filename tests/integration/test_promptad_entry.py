"""PromptAD through the config tree and the train.py entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from composed import compose_config


def _compose(*overrides: str):
    return compose_config("train", overrides, hydra=True)


def test_method_file_selects_published_settings() -> None:
    cfg = _compose("method=promptad")
    assert cfg.backbone.model == "ViT-B-16-plus-240" and cfg.backbone.pretrained == "laion400m_e32"
    assert cfg.backbone.image_size == 240 and cfg.backbone.precision == "fp16"
    assert (
        cfg.prompts.name == "promptad" and cfg.prompts.image_prompts == 3 and cfg.prompts.pixel_prompts == 1
    )
    method = cfg.method
    assert (method.epochs, method.lr, method.momentum, method.weight_decay, method.min_lr) == (
        100,
        0.002,
        0.9,
        0.0005,
        1e-5,
    )
    assert method.margin == 0.0 and method.match_weight == 0.001 and method.map_size == 400
    assert method.test_channel_order == "bgr" and method.memory_after_next_attention and method.vv_start == 1
    assert cfg.seed == 111 and cfg.hydra.sweeper.params.reference_seed == "range(0,3)"
    assert (
        _compose("method=promptad", "backbone=tiny", "backbone.precision=fp32").backbone.precision == "fp32"
    )


@pytest.mark.parametrize("experiment", ["promptad_mvtec", "promptad_visa", "promptad_synthetic"])
def test_experiments_compose(experiment: str) -> None:
    cfg = _compose(f"experiment={experiment}")
    assert cfg.method._target_.endswith("PromptADModule") and cfg.shots >= 1


def test_zero_shot_is_refused_before_weights_load(run_entry_point) -> None:
    result = run_entry_point(
        "train.py", "method=promptad", "data=synthetic", "shots=0", "logger=none", expect_ok=False
    )
    assert result.returncode == 1
    assert "error: method 'promptad' is few-shot only" in result.stderr
    assert "Traceback" not in result.stderr


def test_synthetic_experiment_runs_end_to_end(run_entry_point, tmp_path: Path) -> None:
    run_entry_point(
        "train.py",
        "experiment=promptad_synthetic",
        "logger=none",
        "data.categories=[disc]",
        # two train images (one reference) and five test images, one per defect type
        "+data.num_train=2",
        "+data.num_test_good=2",
        "+data.num_test_per_defect=1",
        "method.epochs=2",
        "method.progress=false",
        "backbone.precision=fp32",
        # 64 px: the learned prompts' size and the files the run writes do not depend on it
        "backbone.image_size=64",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["metrics"]["per_category"]) == {"disc"}
    mean = results["metrics"]["mean"]
    assert mean["image_auroc"] is not None and mean["pixel_auroc"] is not None
    assert results["efficiency"]["trainable_parameters"] == (3 * 4 + 4 + 1 * 4 + 4) * 64
    references = json.loads((tmp_path / "run" / "references.json").read_text())
    assert references["shots"] == 1
