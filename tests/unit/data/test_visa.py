import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.datasets.visa import SPLIT_CSV_COLUMNS, VISA_CATEGORIES, VisA

WIDTH, HEIGHT = 60, 40  # VisA images are wider than tall; the loader squashes them


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _label_mask(path: Path, label: int) -> None:
    """A label-valued mask: the left half carries the (small, non-255) defect instance id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, : WIDTH // 2] = label
    Image.fromarray(mask).save(path)


def make_raw_visa(root: Path, categories=("candle", "pcb1"), num_train=3) -> Path:
    rows = []
    for c, category in enumerate(categories):
        data = root / category / "Data"
        for i in range(num_train + 2):
            name = f"{i:04d}.JPG"
            _image(data / "Images" / "Normal" / name, seed=100 * c + i)
            split = "train" if i < num_train else "test"
            rows.append([category, split, "normal", f"{category}/Data/Images/Normal/{name}", ""])
        for i in range(2):
            _image(data / "Images" / "Anomaly" / f"{i:03d}.JPG", seed=100 * c + 50 + i)
            _label_mask(data / "Masks" / "Anomaly" / f"{i:03d}.png", label=1 + 2 * i)
            rows.append(
                [
                    category,
                    "test",
                    "anomaly",
                    f"{category}/Data/Images/Anomaly/{i:03d}.JPG",
                    f"{category}/Data/Masks/Anomaly/{i:03d}.png",
                ]
            )
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_CSV_COLUMNS)
        # Rows shuffled as in the release, where the order is not the file order.
        writer.writerows(rows[::-1])
    return root


def make_prepared_visa(root: Path, categories=("candle",)) -> Path:
    for c, category in enumerate(categories):
        folder = root / category
        for i in range(3):
            _image(folder / "train" / "good" / f"{i:04d}.JPG", seed=c * 10 + i)
        _image(folder / "test" / "good" / "0100.JPG", seed=c * 10 + 5)
        for i in range(2):
            _image(folder / "test" / "bad" / f"{i:03d}.JPG", seed=c * 10 + 7 + i)
            _label_mask(folder / "ground_truth" / "bad" / f"{i:03d}.png", label=255)
    return root


def test_raw_layout_reads_split_csv(tmp_path):
    source = VisA(make_raw_visa(tmp_path))
    assert source.layout == "raw"
    assert source.categories == ["candle", "pcb1"]
    train = source.samples("candle", "train")
    test = source.samples("candle", "test")
    assert [Path(s.path).name for s in train] == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert all(s.label == 0 and s.mask_path is None for s in train)
    assert [s.label for s in test] == [0, 0, 1, 1]
    anomalous = [s for s in test if s.label == 1]
    assert all(s.mask_path.endswith(".png") and s.defect_type == "bad" for s in anomalous)
    assert source.has_masks("candle")


def test_prepared_layout_is_detected_and_masks_keep_the_image_stem(tmp_path):
    source = VisA(make_prepared_visa(tmp_path))
    assert source.layout == "prepared"
    test = source.samples("candle", "test")
    assert [s.label for s in test] == [1, 1, 0]
    assert Path(test[0].mask_path).name == "000.png"
    assert len(source.samples("candle", "train")) == 3


def test_explicit_layout_and_bad_layout_value(tmp_path):
    make_raw_visa(tmp_path)
    assert VisA(tmp_path, layout="raw").layout == "raw"
    with pytest.raises(DataError, match="data.layout='mvtec'"):
        VisA(tmp_path, layout="mvtec")


def test_label_valued_masks_are_binarised_and_squashed_with_the_image(tmp_path, caplog):
    source = VisA(make_raw_visa(tmp_path))
    sample = next(s for s in source.samples("pcb1", "test") if s.label == 1)
    with caplog.at_level(logging.WARNING):
        item = AnomalyImageDataset([sample], image_size=32)[0]
    assert item["image"].shape == (3, 32, 32)
    mask = item["mask"]
    # Label value 1 counts as defect; the left half of the 60x40 mask is the left half of the square.
    assert torch.equal(mask[:, :16], torch.ones(32, 16))
    assert torch.equal(mask[:, 16:], torch.zeros(32, 16))
    assert "resized" not in caplog.text  # same size as the image: no warning


def test_split_csv_location_and_columns_are_checked(tmp_path):
    make_raw_visa(tmp_path)
    custom = tmp_path / "my_split.csv"
    (tmp_path / "split_csv" / "1cls.csv").rename(custom)
    with pytest.raises(DataError, match="split CSV not found: .*1cls.csv"):
        _ = VisA(tmp_path, layout="raw").categories
    assert VisA(tmp_path, split_csv=str(custom)).categories == ["candle", "pcb1"]
    custom.write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DataError, match=r"columns are \['object', 'split', 'image'\], expected"):
        _ = VisA(tmp_path, split_csv=str(custom)).categories


def test_bad_input_messages(tmp_path):
    with pytest.raises(DataError, match="dataset root does not exist: .*nowhere"):
        _ = VisA(tmp_path / "nowhere").categories
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset root is empty"):
        _ = VisA(tmp_path / "empty").categories

    root = make_raw_visa(tmp_path / "visa")
    valid = r"\['cashew'\] not in dataset 'visa'. Valid categories: \['candle', 'pcb1'\]"
    with pytest.raises(DataError, match=valid):
        _ = VisA(root, categories=["cashew"]).categories

    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DataError, match=f"anomalous test image .*001.JPG has no mask; expected {mask}"):
        VisA(root).samples("candle", "test")

    import shutil

    shutil.rmtree(root / "pcb1")
    with pytest.raises(DataError, match="VisA category folder missing: .*pcb1"):
        _ = VisA(root).categories


def test_all_twelve_categories_are_known():
    assert len(VISA_CATEGORIES) == 12 and "pipe_fryum" in VISA_CATEGORIES


def test_visa_raw_runs_end_to_end_through_the_config(tmp_path):
    """conf/data/visa.yaml builds the source; a tiny-CLIP run reports pixel metrics for the category."""
    from hydra import compose, initialize_config_dir

    from anomaly_vlm.tasks.runner import run

    root = make_raw_visa(tmp_path / "visa", categories=("candle",))
    out = tmp_path / "run"
    overrides = [
        "backbone=tiny",
        "logger=none",
        "trainer=cpu",
        "datamodule.num_workers=0",
        "data=visa",
        f"data.root={root}",
        "data.class_names={candle: wax candle}",
        f"paths.output_dir={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    conf = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg, fit=False)
    metrics = json.loads((out / "results.json").read_text())["metrics"]["per_category"]["candle"]
    assert metrics["pixel_aupro"] is not None and metrics["image_auroc"] is not None
