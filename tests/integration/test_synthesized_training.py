"""``train_data=folder`` with normal images only: one clear error without synthesis, a full run with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from composed import compose_config
from omegaconf import OmegaConf, open_dict
from PIL import Image

from anomaly_vlm.data.defect_synthesis.textures import skimage_photo
from anomaly_vlm.tasks.errors import ConfigError
from anomaly_vlm.tasks.runner import run
from anomaly_vlm.tasks.training_data import split_synthesis

CONF = Path(__file__).resolve().parents[2] / "conf"
NORMAL_IMAGES = 4


def _normal_only_folder(root: Path) -> Path:
    """``tiles/train/good/*.png`` and nothing else: no test/, no defects, no masks."""
    folder = root / "tiles" / "train" / "good"
    folder.mkdir(parents=True)
    photo = skimage_photo("brick")
    rng = np.random.default_rng(0)
    for index in range(NORMAL_IMAGES):
        top, left = rng.integers(0, 384, size=2)
        Image.fromarray(photo[top : top + 128, left : left + 128]).save(folder / f"{index}.png")
    return root


TRAIN_ON_FOLDER = (
    "experiment=aprillab_synthetic",
    "train_data=folder",
    "train_data.categories=null",
    "datamodule.train_split=train",
    "data.categories=[disc]",
    "logger=none",
    "trainer=cpu",
)


def test_every_train_data_has_synthesis_off_and_the_dataset_never_sees_its_keys():
    names = sorted(path.stem for path in (CONF / "train_data").glob("*.yaml"))
    assert len(names) > 10
    # Every option in one composition, each under its own name: a tenth of the time of one train
    # composition per option. The group is composed there as in a job's config (folder checked below).
    every = compose_config(None, [f"+train_data@{name}={name}" for name in names])
    for name in names:
        node = every[name]
        assert node.synthesize_anomalies is False, name
        assert node.synthesis._target_ == "anomaly_vlm.data.defect_synthesis.AnomalySynthesizer"
        dataset, synthesis = split_synthesis(node)
        assert synthesis is None and "synthesis" not in dataset and "synthesize_anomalies" not in dataset
        assert "synthesis" in node  # the job's config is left whole
    in_a_job = compose_config("train", ["train_data=folder", "seed=3"]).train_data
    assert OmegaConf.to_container(in_a_job) == OmegaConf.to_container(every.folder)
    cfg = compose_config("train", ["train_data=folder", "train_data.synthesize_anomalies=true", "seed=3"])
    dataset, synthesis = split_synthesis(cfg.train_data)
    assert synthesis.seed == 3 and dataset._get_parent() is cfg  # interpolations still resolve
    with open_dict(cfg):
        cfg.train_data.synthesize_anomalies = "yes"
    with pytest.raises(ConfigError, match="train_data.synthesize_anomalies='yes' must be true or false"):
        split_synthesis(cfg.train_data)


def test_normal_only_train_data_without_synthesis_is_one_error_line(tmp_path, run_entry_point):
    root = _normal_only_folder(tmp_path / "normal")
    result = run_entry_point(
        "train.py",
        *TRAIN_ON_FOLDER,
        f"train_data.root={root}",
        f"data.root={tmp_path / 'synthetic'}",
        "+data.num_train=1",
        "+data.num_test_good=1",
        "+data.num_test_per_defect=1",
        f"hydra.run.dir={tmp_path / 'out'}",
        expect_ok=False,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        "error: train_data=folder (split 'train', categories ['tiles']) holds only normal images "
        f"({NORMAL_IMAGES}), no defects with masks to learn from; add train_data.synthesize_anomalies=true "
        "to train on defects synthesized on them"
    )
    assert "Traceback" not in result.stderr


def test_normal_only_train_data_trains_with_synthesized_defects_that_bypass_the_feature_cache(tmp_path):
    root = _normal_only_folder(tmp_path / "normal")
    out = tmp_path / "run"
    overrides = [
        *TRAIN_ON_FOLDER,
        f"train_data.root={root}",
        "train_data.synthesize_anomalies=true",
        "train_data.synthesis.probability=1.0",
        "prompts=two_prompt",  # the 420 sentences of the published set cost more than the training here
        "backbone.image_size=64",  # the assertions count items and read that metrics exist, not sizes
        "trainer.max_epochs=2",
        "reuse_trained=false",
        "shots=0",
        "threshold.method=f1",
        "num_overlays=0",
        "datamodule.num_workers=0",
        f"data.root={tmp_path / 'synthetic'}",
        "+data.num_train=1",
        "+data.num_test_good=1",
        "+data.num_test_per_defect=1",
        f"paths.output_dir={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"feature_cache.dir={tmp_path / 'features'}",
        "+trainer.enable_progress_bar=false",
    ]
    cfg = compose_config("train", overrides)
    run(cfg, fit=True)
    results = json.loads((out / "results.json").read_text())
    assert (out / "checkpoints" / "trained.ckpt").is_file()
    assert results["metrics"]["mean"]["pixel_auroc"] is not None
    # Every training item is a synthesized image, new each epoch: encoded every time, never cached.
    assert results["feature_cache"]["bypassed"] == NORMAL_IMAGES * 2
