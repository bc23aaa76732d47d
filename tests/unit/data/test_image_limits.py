"""``data.max_image_pixels``: an image or mask over the limit is refused from its header, before decoding."""

from __future__ import annotations

import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile_files import bomb_png
from PIL import Image

from anomaly_vlm.data import AnomalyDataModule, DataError
from anomaly_vlm.data.checks import check_image_file, preflight
from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.data.defect_synthesis import AnomalySynthesizer
from anomaly_vlm.data.defect_synthesis.textures import load_texture
from anomaly_vlm.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    image_size_of,
    load_image,
    load_mask,
    open_image,
)


def _save(path: Path, size: int = 16, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, np.uint8)).save(path)
    return path


def _folder(root: Path, with_mask: bool = True) -> Path:
    for i in range(2):
        _save(root / "widget" / "train" / "good" / f"{i}.png")
        _save(root / "widget" / "test" / "good" / f"{i}.png")
    _save(root / "widget" / "test" / "dent" / "0.png")
    if with_mask:
        _save(root / "widget" / "ground_truth" / "dent" / "0_mask.png", mode="L")
    return root


def test_a_decompression_bomb_is_refused_from_its_header_fast(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200
    with Image.open(bomb) as header:
        assert header.size == (100_000, 100_000)  # what PIL would allocate ~10 GB for on decoding
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for read in (
        lambda: load_image(str(bomb), 16),
        lambda: load_mask(str(bomb), 16),
        lambda: check_image_file(bomb),
        lambda: image_size_of(str(bomb)),
        lambda: load_texture(str(bomb)),
    ):
        with pytest.raises(DataError) as error:
            read()
        message = str(error.value)
        assert str(bomb) in message
        assert "10,000,000,000 pixels" in message and f"{DEFAULT_MAX_IMAGE_PIXELS:,}" in message
        assert "max_image_pixels" in message
    assert time.perf_counter() - start < 2.0
    # ru_maxrss is in KiB on Linux: decoding would have touched gigabytes.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024


def test_the_refusal_names_the_config_key(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"over the limit of 100,000,000 \(data\.max_image_pixels\)"):
        load_image(str(bomb), 16)
    with pytest.raises(DataError, match=r"\(train_data\.max_image_pixels\)"):
        check_image_file(bomb, key="train_data.max_image_pixels")


def test_the_configured_limit_overrules_pil_in_both_directions(tmp_path):
    # Between PIL's warning (~89 MP) and error (~179 MP) thresholds, and above the error one: the project's
    # limit decides, and PIL neither warns nor refuses on its own.
    for width, height in ((10_000, 9_500), (20_000, 10_000)):
        large = bomb_png(tmp_path / f"{width}.png", width, height)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with open_image(large, max_pixels=width * height) as image:
                assert image.size == (width, height)
            with open_image(large, max_pixels=None) as image:
                assert image.size == (width, height)
        with pytest.raises(DataError, match="max_image_pixels"):
            open_image(large, max_pixels=width * height - 1)


def test_a_lowered_limit_refuses_a_normal_image_everywhere_it_is_read(tmp_path):
    root = _folder(tmp_path / "data")
    image = root / "widget" / "test" / "dent" / "0.png"
    mask = root / "widget" / "ground_truth" / "dent" / "0_mask.png"
    load_image(str(image), 8, max_pixels=256)  # 16x16 = 256: at the limit is fine
    with pytest.raises(DataError, match=rf"image {image} is 16x16 = 256 pixels, over the limit of 255"):
        load_image(str(image), 8, max_pixels=255)
    with pytest.raises(DataError, match=rf"mask {mask} is 16x16 = 256 pixels"):
        load_mask(str(mask), 8, max_pixels=255)

    source = FolderDataset(root, max_image_pixels=255)
    assert source.max_image_pixels == 255
    datamodule = AnomalyDataModule(source, image_size=8)
    with pytest.raises(DataError, match=r"256 pixels, over the limit of 255 \(data\.max_image_pixels\)"):
        preflight(datamodule, datamodule.categories, {})
    with pytest.raises(DataError, match="over the limit of 255"):
        next(iter(datamodule.category_test_dataloader("widget")))
    with pytest.raises(DataError, match="over the limit of 255"):
        datamodule.load_images(source.samples("widget", "train"))
    # The same files within the default limit read as before.
    relaxed = AnomalyDataModule(FolderDataset(root), image_size=8)
    assert preflight(relaxed, relaxed.categories, {}) == 4  # 3 test images and 1 mask
    assert relaxed.load_images(source.samples("widget", "train")).shape == (2, 3, 8, 8)


def test_training_data_is_held_to_its_own_limit(tmp_path):
    evaluated = FolderDataset(_folder(tmp_path / "test_set"))
    training = FolderDataset(_folder(tmp_path / "train_set"), max_image_pixels=100)
    datamodule = AnomalyDataModule(evaluated, image_size=8, train_source=training)
    refused = r"train_set.* over the limit of 100 \(train_data\.max_image_pixels\)"
    with pytest.raises(DataError, match=refused):
        preflight(datamodule, datamodule.categories, {})
    dataset = AnomalyImageDataset(training.samples("widget", "test"), 8, max_image_pixels=100)
    with pytest.raises(DataError, match="over the limit of 100"):
        dataset[0]


def test_texture_files_of_synthesized_defects_are_limited(tmp_path):
    texture = _save(tmp_path / "texture.png", size=32)
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    options = {"kinds": ["texture"], "probability": 1.0, "textures": [str(texture)]}
    refusing = AnomalySynthesizer(**options, max_image_pixels=1000)
    with pytest.raises(DataError, match=r"texture .* over the limit of 1,000 \(train_data\.synthesis\."):
        refusing.synthesize(image, np.random.default_rng(0), kind="texture")
    made = AnomalySynthesizer(**options, max_image_pixels=1024).synthesize(image, np.random.default_rng(0))
    assert made is not None and made.kind == "texture"


@pytest.mark.parametrize("value", [0, -5, 1.5, "many", True])
def test_a_limit_that_is_not_a_positive_number_is_refused(tmp_path, value):
    with pytest.raises(DataError, match=r"data\.max_image_pixels=.* must be a positive number"):
        FolderDataset(tmp_path, max_image_pixels=value)


def test_every_data_config_has_the_limit_and_passes_it_to_its_source(tmp_path):
    from composed import compose_config
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[3] / "conf"
    names = sorted(path.stem for path in (conf / "data").glob("*.yaml"))
    for name in names:
        cfg = compose_config("train", [f"data={name}", "train_data=folder"])
        assert cfg.data.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS, name
    assert cfg.train_data.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    cfg = compose_config(
        "train",
        [
            "data=folder",
            f"data.root={_folder(tmp_path / 'data')}",
            "data.max_image_pixels=255",
            "train_data=folder",
            "train_data.max_image_pixels=77",
        ],
    )
    assert instantiate(cfg.data).max_image_pixels == 255
    # Texture files follow the training data's limit (interpolated, stated once).
    assert cfg.train_data.synthesis.max_image_pixels == 77
