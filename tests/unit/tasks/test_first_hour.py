"""Mistakes and surprises of a first hour with the tool: each fails in one line or behaves as documented."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from composed import compose_config
from hydra.errors import ConfigCompositionException
from PIL import Image

from anomaly_vlm.callbacks.efficiency import EfficiencyProbe
from anomaly_vlm.data import DataError
from anomaly_vlm.tasks.errors import USER_ERRORS, CheckpointError, ConfigError
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.outputs import guard_finished_run
from anomaly_vlm.tasks.predict import heatmap_name, label_progress_as_predicting
from anomaly_vlm.tasks.runner import run

RNG = np.random.default_rng(0)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder_data(tmp_path) -> Path:
    """One category, masks for its two anomalous test images."""
    root = tmp_path / "data"
    for i in range(2):
        _save(root / "widget" / "train" / "good" / f"{i}.png", RNG.integers(0, 255, (24, 24, 3), np.uint8))
        _save(root / "widget" / "test" / "good" / f"{i}.png", RNG.integers(0, 255, (24, 24, 3), np.uint8))
        _save(root / "widget" / "test" / "dent" / f"{i}.png", RNG.integers(0, 255, (24, 24, 3), np.uint8))
        mask = np.zeros((24, 24), np.uint8)
        mask[4:12, 4:12] = 255
        _save(root / "widget" / "ground_truth" / "dent" / f"{i}_mask.png", mask)
    return root


def config(output_dir: Path, *overrides: str, name: str = "train"):
    base = [
        "backbone=tiny",
        "logger=none",
        "trainer=cpu",
        "datamodule.num_workers=0",
        f"paths.output_dir={output_dir}",
        f"paths.cache_dir={output_dir.parent / 'cache'}",
        "+trainer.enable_progress_bar=false",
    ]
    return compose_config(name, [*base, *overrides])


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to build the backbone fails: proves a check ran before weights load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built before the input was checked")

    monkeypatch.setattr("anomaly_vlm.backbones.FrozenCLIP.__init__", refuse)


# 1 ------------------------------------------------------------------------------------------------------
def test_unlabelled_images_without_mode_predict_say_so(tmp_path, folder_data, no_weights):
    cfg = config(
        tmp_path / "a", "data=images", f"data.path={folder_data / 'widget' / 'test'}", name="evaluate"
    )
    with pytest.raises(DataError, match=r"data=images holds unlabelled images.*mode=predict"):
        run(cfg, fit=False)


# 2, 19 ---------------------------------------------------------------------------------------------------
def test_files_that_are_not_checkpoints_are_named(tmp_path, folder_data, no_weights):
    data = ["data=folder", f"data.root={folder_data}"]
    png = folder_data / "widget" / "test" / "good" / "0.png"
    with pytest.raises(CheckpointError, match=rf"ckpt_path={png} is not a checkpoint"):
        run(config(tmp_path / "a", *data, f"ckpt_path={png}"), fit=False)
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(CheckpointError, match=rf"ckpt_path={empty} is an empty file, not a checkpoint"):
        run(config(tmp_path / "b", *data, f"ckpt_path={empty}"), fit=False)
    with pytest.raises(CheckpointError, match=rf"ckpt_path={tmp_path} is a folder, not a checkpoint file"):
        run(config(tmp_path / "c", *data, f"ckpt_path={tmp_path}"), fit=False)
    assert CheckpointError in USER_ERRORS


def test_dataset_root_that_is_a_file_is_called_a_file(tmp_path, no_weights):
    file = tmp_path / "data.zip"
    file.write_bytes(b"PK")
    for data in ("folder", "mvtec", "visa"):
        with pytest.raises(DataError, match=rf"dataset root {file} is a file"):
            run(config(tmp_path / data, f"data={data}", f"data.root={file}"), fit=False)


# 3 -------------------------------------------------------------------------------------------------------
def test_block_indices_outside_the_backbone_fail_before_weights_load(tmp_path, folder_data, no_weights):
    data = ["method=anomalyclip", "backbone=tiny", "data=folder", f"data.root={folder_data}"]
    expected = r"method.layers=\[24\]: blocks \[24\] outside 1..8 of backbone 'anomaly-vlm-tiny'"
    with pytest.raises(ConfigError, match=expected) as error:
        run(config(tmp_path / "a", *data), fit=False)
    assert "e.g. method.layers=[8]" in str(error.value)
    depth = r"prompts.deep_prompt_depth=9 exceeds the 4 text blocks of backbone 'anomaly-vlm-tiny'"
    with pytest.raises(ConfigError, match=depth):
        run(config(tmp_path / "b", *data, "method.layers=[8]"), fit=False)
    assert ConfigError in USER_ERRORS


# 4 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "1.5", "true"])
def test_shots_must_be_a_whole_number(tmp_path, value):
    """The typed schema (anomaly_vlm/config.py) rejects it at compose time, naming key and value."""
    with pytest.raises(ConfigCompositionException, match=rf"Error merging override shots={value}") as error:
        config(tmp_path / "a", f"shots={value}")
    assert "could not be converted to Integer" in str(error.value.__cause__)


# 8 -------------------------------------------------------------------------------------------------------
def test_heatmap_names_keep_the_extension(tmp_path):
    names = {heatmap_name(str(tmp_path / f"a.{ext}"), str(tmp_path)) for ext in ("png", "jpg", "bmp", "tiff")}
    assert names == {"a.png", "a.jpg", "a.bmp", "a.tiff"}
    assert heatmap_name(str(tmp_path / "sub" / "x.webp"), str(tmp_path)) == "sub__x.webp"


# 10, 16 --------------------------------------------------------------------------------------------------
def _trained_parameters(cfg, path: Path) -> Path:
    """A checkpoint as training writes it, without training (the parameters' values do not matter)."""
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=0, text_cache_dir=None
    )
    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_results_record_what_was_loaded_and_csv_logs_everything(tmp_path, folder_data):
    data = ["method=aprillab", "data=folder", f"data.root={folder_data}", "train_data=synthetic"]
    # Two prompts, 64 px, thresholds from the test set (no held-out pass): what is recorded does not change.
    data += ["prompts=two_prompt", "backbone.image_size=64", "threshold.method=f1"]
    untrained = tmp_path / "untrained"
    run(config(untrained, *data, "logger=csv", name="evaluate"), fit=False)
    results = json.loads((untrained / "results.json").read_text())
    assert results["train_dataset"] is None and results["untrained"] is True
    assert results["trained_checkpoint"] is None
    # logger=csv also holds the mean and the efficiency figures, which are logged after testing.
    (metrics_file,) = untrained.rglob("metrics.csv")
    with metrics_file.open() as handle:
        columns = next(csv.reader(handle))
    assert "test/image_auroc" in columns and "efficiency/total_parameters" in columns
    assert any(column.startswith("test/widget/") for column in columns)

    ckpt = _trained_parameters(config(tmp_path / "x", *data), tmp_path / "trained.ckpt")
    loaded = tmp_path / "loaded"
    run(config(loaded, *data, f"ckpt_path={ckpt}", name="evaluate"), fit=False)
    results = json.loads((loaded / "results.json").read_text())
    assert results["trained_checkpoint"] == str(ckpt) and results["untrained"] is False


# 13 ------------------------------------------------------------------------------------------------------
def test_overwrite_removes_the_artefacts_of_the_earlier_run(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"status": "complete", "metrics": {}}))
    stale = [tmp_path / "overlays" / "widget" / "old.png", tmp_path / "heatmaps" / "a.png"]
    stale.append(tmp_path / "predictions" / "scores.csv")
    kept = tmp_path / "checkpoints" / "last.ckpt"
    for path in [*stale, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert guard_finished_run(tmp_path, overwrite=True) is None
    assert not any(path.exists() for path in stale)
    assert kept.exists()  # resumption state is not an artefact


# 15 ------------------------------------------------------------------------------------------------------
def test_a_job_of_one_batch_still_gets_a_latency():
    probe = EfficiencyProbe(warmup_batches=1)
    batch = [0, 1, 2, 3]
    probe.on_test_batch_start(None, None, batch, 0)
    probe.on_test_batch_end(None, None, None, batch, 0)
    figures = probe.summary()
    assert figures["ms_per_image"] is not None and figures["ms_per_image"] > 0
    assert figures["timing_includes_warmup"] is True and figures["timed_images"] == 4
    probe.on_test_batch_start(None, None, batch, 1)
    probe.on_test_batch_end(None, None, None, batch, 1)
    assert probe.summary()["timing_includes_warmup"] is False


# 18 ------------------------------------------------------------------------------------------------------
def test_prediction_progress_bar_says_predicting(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    label_progress_as_predicting(trainer)  # the default bar (rich when installed)
    assert trainer.progress_bar_callback.test_description == "Predicting"
    trainer = L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=tmp_path, callbacks=[TQDMProgressBar()]
    )
    label_progress_as_predicting(trainer)
    bar = trainer.progress_bar_callback
    progress = bar.init_test_tqdm()
    assert progress.desc.startswith("Predicting") and isinstance(bar, TQDMProgressBar)
    progress.close()


def test_wandb_heatmaps_leave_no_overlays_when_num_overlays_is_0(tmp_path, folder_data, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()
    out = tmp_path / "run"
    try:
        # two prompts at 64 px: the overlays and panels do not depend on them
        small = ["prompts=two_prompt", "backbone.image_size=64"]
        run(config(out, "data=folder", f"data.root={folder_data}", *small, "logger=wandb"), fit=False)
    finally:
        wandb.teardown()
    assert not (out / "overlays").exists()
    assert list((out / "wandb").rglob("*.png"))  # the panels themselves reached the W&B run


# 11 ------------------------------------------------------------------------------------------------------
def test_reproduction_preflight_refuses_a_partial_benchmark_root(tmp_path):
    from anomaly_vlm.tasks.preflight import check

    _save(tmp_path / "visa" / "candle" / "test" / "good" / "0.png", np.zeros((8, 8, 3), np.uint8))
    overrides = ["experiment=winclip_visa", f"data.root={tmp_path / 'visa'}", f"paths.cache_dir={tmp_path}"]
    with pytest.raises(
        DataError, match=r"data: visa root .* holds 1 of its 12 categories \(missing: \['capsules'"
    ):
        check(overrides)
