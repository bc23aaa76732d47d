"""normal_fpr thresholds never come from the images the method was trained on."""

import json
import os
import shutil

from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.decisions.consumers import HeldOutSource
from anomaly_vlm.tasks.heldout import training_images
from anomaly_vlm.tasks.runner import run

from .test_inputs import config, make_dataset


def test_the_readme_command_on_one_folder_holds_out_nothing(tmp_path, caplog):
    # "Train on your own normal images" (README), training and testing on one folder: every train/good
    # image trained the method, so none is held out and there are no normal_fpr decisions.
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    cfg = config(
        out,
        "method=aprillab",
        f"train_data.root={data}",
        "train_data=folder",
        "train_data.synthesize_anomalies=true",
        "datamodule.train_split=train",
        "data=folder",
        f"data.root={data}",
        "save_detector=true",
        "trainer.max_epochs=1",
        "prompts.templates=['a photo of a {}.']",
    )
    with caplog.at_level("WARNING"):
        run(cfg, fit=True)
    assert "3 trained the method (train_data) and 0 are references: no decisions" in caplog.text
    decisions = json.loads((out / "results.json").read_text())["decisions"]
    assert decisions["thresholds"] == {}
    assert all(value is None for value in decisions["per_category"]["widget"].values())
    saved = json.loads((out / "detectors" / "widget" / "detector.json").read_text())
    assert saved["thresholds"] is None


def test_only_the_images_that_trained_the_method_are_excluded(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data")
    # train_data is another folder linking to one image of widget/train/good, and named relative to the cwd.
    train = tmp_path / "train"
    (train / "widget" / "train" / "good").mkdir(parents=True)
    shutil.copytree(data / "widget" / "test", train / "widget" / "test")
    os.symlink(data / "widget" / "train" / "good" / "1.png", train / "widget" / "train" / "good" / "1.png")
    monkeypatch.chdir(tmp_path)
    datamodule = AnomalyDataModule(
        FolderDataset(data),
        image_size=64,
        train_source=FolderDataset("train", require_masks=False),
        train_split="train",
    )
    held_out = HeldOutSource(datamodule.source, {}, trained_on=training_images(datamodule))
    assert sorted(os.path.basename(s.path) for s in held_out.samples("widget", "test")) == ["0.png", "2.png"]
    assert len(held_out.samples("gadget", "test")) == 3
    assert training_images(AnomalyDataModule(FolderDataset(data), image_size=64)) == set()
