"""Dataset behaviour a new user relies on: class names everywhere, mask-suffix warning, RGBA on black."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from composed import compose_config
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.data.datasets.mvtec import MVTecAD
from anomaly_vlm.data.image_io import load_image, to_rgb
from anomaly_vlm.tasks.instantiate import build


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_class_names_work_on_every_dataset(tmp_path, cache_dir):
    (tmp_path / "mvtec" / "bottle").mkdir(parents=True)
    visa = tmp_path / "visa" / "candle" / "test" / "good"
    visa.mkdir(parents=True)
    roots = {
        "mvtec": ("bottle", tmp_path / "mvtec"),
        "synthetic": ("brick", cache_dir / "synthetic"),
        "visa": ("candle", tmp_path / "visa"),
        "folder": ("candle", tmp_path / "visa"),
    }
    for data, (category, root) in roots.items():
        # The root and names are value overrides: each data group is one cached composition.
        cfg = compose_config(
            "train", [f"data={data}", f"data.root={root}", f"data.class_names={{{category}: my {category}}}"]
        )
        assert build(cfg.data).class_names == {category: f"my {category}"}, data
    with pytest.raises(DataError, match=r"data.class_names: \['nope'\] not in dataset 'mvtec'"):
        _ = MVTecAD(tmp_path / "mvtec", class_names={"nope": "x"}).class_names


def test_masks_that_miss_the_suffix_are_reported(tmp_path, caplog):
    noise = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
    _save(tmp_path / "part" / "test" / "good" / "0.png", noise)
    _save(tmp_path / "part" / "test" / "scratch" / "0.png", noise)
    _save(tmp_path / "part" / "ground_truth" / "scratch" / "0_gt.png", np.full((16, 16), 255, np.uint8))
    with caplog.at_level(logging.WARNING):
        samples = FolderDataset(tmp_path).samples("part", "test")
    assert all(sample.mask_path is None for sample in samples)
    message = caplog.text
    assert "data.mask_suffix='_mask'" in message and "0_gt.png" in message and "0_mask.png" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        samples = FolderDataset(tmp_path, mask_suffix="_gt").samples("part", "test")
    assert [Path(s.mask_path).name for s in samples if s.label] == ["0_gt.png"] and not caplog.text


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200  # colour under the alpha channel
    rgba[:, :10, 3] = 255  # left half opaque, right half fully transparent
    path = tmp_path / "half.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = load_image(str(path), 20).permute(1, 2, 0).numpy()
    black = float(np.mean(np.all(pixels == 0, axis=-1)))
    assert black == pytest.approx(0.5)
    assert np.allclose(pixels[:, :10], 200 / 255, atol=1e-6)  # opaque pixels keep their colour
    half = Image.fromarray(
        np.dstack([np.full((4, 4, 3), 200, np.uint8), np.full((4, 4), 128, np.uint8)]), "RGBA"
    )
    assert np.asarray(to_rgb(half))[0, 0, 0] == round(200 * 128 / 255)  # partial alpha blends onto black
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 255, 0])
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[0, 0, 0], [0, 255, 0]]]
