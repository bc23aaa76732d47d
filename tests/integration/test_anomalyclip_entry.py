"""AnomalyCLIP through the config tree and the train.py entry point."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from composed import compose_config
from warm_python import run_python

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _compose(*overrides: str):
    return compose_config("train", overrides)


def test_method_file_selects_published_settings() -> None:
    cfg = _compose("method=anomalyclip")
    assert cfg.backbone.model == "ViT-L-14-336-quickgelu" and cfg.backbone.quick_gelu
    assert cfg.backbone.image_size == 518 and cfg.backbone.pos_embed_interpolation == "bilinear"
    assert cfg.prompts.name == "anomalyclip_learned"
    assert (cfg.prompts.context_length, cfg.prompts.deep_prompt_length, cfg.prompts.deep_prompt_depth) == (
        12,
        4,
        9,
    )
    assert list(cfg.method.layers) == [24] and cfg.method.local_loss_weight == 4.0
    assert cfg.method.lr == 1e-3 and list(cfg.method.betas) == [0.5, 0.999]
    assert cfg.seed == 111 and cfg.trainer.max_epochs == 15 and cfg.datamodule.train_batch_size == 8
    # The command line still wins over the method file's choices.
    assert _compose("method=anomalyclip", "backbone=tiny").backbone.model == "anomaly-vlm-tiny"


@pytest.mark.parametrize(
    ("experiment", "data", "train_data"),
    [("anomalyclip_mvtec", "mvtec", "visa"), ("anomalyclip_visa", "visa", "mvtec")],
)
def test_cross_dataset_experiments_compose(experiment: str, data: str, train_data: str) -> None:
    missing = [
        path for path in (f"data/{data}.yaml", f"train_data/{train_data}.yaml") if not (CONF / path).is_file()
    ]
    if missing:
        pytest.skip(f"dataset configs {missing} are not in this checkout")
    cfg = _compose(f"experiment={experiment}")
    assert cfg.method._target_.endswith("AnomalyCLIPModule")
    assert cfg.prompts.name == "anomalyclip_learned"
    assert cfg.data.root != cfg.train_data.root


def test_synthetic_experiment_trains_and_tests_offline(tmp_path: Path, cache_dir: Path) -> None:
    """The experiment end to end; its ``data.class_names`` meet the learned prompt set, which has no
    class-name slot: one log line, never a crash."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "train.py",
        "experiment=anomalyclip_synthetic",
        "logger=none",
        f"paths.output_root={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        # The session's generated images (the cache of trained parameters stays this test's own), five
        # test images per category and fifteen to train on: one batch each way.
        f"data.root={cache_dir / 'synthetic'}",
        f"train_data.root={cache_dir / 'synthetic'}",
        "+data.num_train=2",
        "+data.num_test_good=2",
        "+data.num_test_per_defect=1",
        "+train_data.num_train=2",
        "+train_data.num_test_good=2",
        "+train_data.num_test_per_defect=1",
        "data.class_names={disc: metal disc}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        # 64 px: what the run writes and trains does not depend on it
        "backbone.image_size=64",
    ]
    completed = run_python(command, cwd=ROOT, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout + completed.stderr
    assert output.count("class_names ['disc'] are ignored") == 1, output[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["metrics"]["per_category"]) == {"disc", "nut"}
    assert results["metrics"]["mean"]["pixel_auroc"] is not None
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "trained.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == {
        "model.prompt_encoder.context_normal",
        "model.prompt_encoder.context_anomalous",
        "model.prompt_encoder.deep_prompts",
    }
    assert checkpoint["anomaly_vlm"]["layers"] == [8]


# test_synthetic_experiment_trains_and_tests_offline checks the same log line in its run (synthetic data);
# runs on data=folder: tests/unit/deploy/test_set_statistics.py, tests/unit/tasks/test_decisions_run.py.
@pytest.mark.slow
def test_class_names_are_ignored_by_learned_prompts(tmp_path: Path, cache_dir: Path) -> None:
    """``data.class_names`` with a learned prompt set: one log line, never a crash (folder data)."""
    from anomaly_vlm.data.toy import generate_synthetic_dataset

    root = generate_synthetic_dataset(
        tmp_path / "folder", categories=["disc"], num_train=2, num_test_good=2, num_test_per_defect=1
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "train.py",
        "experiment=anomalyclip_synthetic",
        "data=folder",
        f"data.root={root}",
        "data.categories=[disc]",
        "data.class_names={disc: metal disc}",
        "logger=none",
        f"paths.output_root={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        # the experiment's three training categories: the session's smallest generated set
        f"train_data.root={cache_dir / 'synthetic'}",
        "+train_data.num_train=2",
        "+train_data.num_test_good=2",
        "+train_data.num_test_per_defect=1",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "backbone.image_size=64",
    ]
    completed = run_python(command, cwd=ROOT, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout + completed.stderr
    assert output.count("class_names ['disc'] are ignored") == 1, output[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["metrics"]["per_category"]) == {"disc"}
