"""Input geometry (squash or aspect-preserving shorter side with a crop) and evaluation at the files'
resolution: the data layer's part of AnomalyDINO's official preprocessing, opt-in, squash unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.cache.digest import file_digest
from anomaly_vlm.data import AnomalyDataModule, DataError, MVTecLayout
from anomaly_vlm.data.image_io import input_geometry, load_image, load_mask, resize_image


def _picture(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _dataset(root: Path, sizes: dict[str, tuple[int, int]]) -> MVTecLayout:
    """A one-category MVTec layout whose test files have the given (width, height)."""
    for index, name in enumerate(["000", "001"]):
        (root / "widget" / "train" / "good").mkdir(parents=True, exist_ok=True)
        _picture(150, 100, index).save(root / "widget" / "train" / "good" / f"{name}.png")
    for index, (name, (width, height)) in enumerate(sorted(sizes.items())):
        kind = "good" if name.startswith("g") else "crack"
        folder = root / "widget" / "test" / kind
        folder.mkdir(parents=True, exist_ok=True)
        _picture(width, height, 10 + index).save(folder / f"{name}.png")
        if kind == "crack":
            mask = np.zeros((height, width), np.uint8)
            mask[height // 4 : height // 2, width // 3 : width // 2] = 255
            (root / "widget" / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "widget" / "ground_truth" / "crack" / f"{name}_mask.png")
    return MVTecLayout(root)


def test_shorter_side_rounds_as_torchvision_and_crops_to_the_patch():
    # The official AnomalyDINO sizes: a 1500x1000 file at 448 -> 672x448 px (48x32 patches).
    assert input_geometry(1500, 1000, 448, "shorter_side", 14) == ((672, 448), (672, 448))
    assert input_geometry(1000, 1500, 448, "shorter_side", 14) == ((448, 672), (448, 672))
    assert input_geometry(1284, 1168, 448, "shorter_side", 14) == ((492, 448), (490, 448))
    assert input_geometry(1500, 1000, 448) == ((448, 448), (448, 448))  # squash
    assert input_geometry(1500, 1000, None, "shorter_side", 14) == ((1500, 1000), (1500, 1000))


def test_shorter_side_is_the_official_transform(tmp_path):
    torchvision = pytest.importorskip("torchvision.transforms")
    picture = _picture(150, 100, 0)
    picture.save(tmp_path / "a.png")
    ours = load_image(str(tmp_path / "a.png"), 56, geometry="shorter_side", multiple=14)
    assert ours.shape == (3, 56, 84)
    transform = torchvision.Compose(
        [
            torchvision.Resize(56, interpolation=torchvision.InterpolationMode.BICUBIC, antialias=True),
            torchvision.ToTensor(),
        ]
    )
    official = transform(picture)
    assert official.shape == (3, 56, 84)
    torch.testing.assert_close(ours, official, rtol=0, atol=0)
    # 150x100 at 50 px: 75x50 resized, cropped to 70x42 (bottom and right).
    cropped = load_image(str(tmp_path / "a.png"), 50, geometry="shorter_side", multiple=14)
    torch.testing.assert_close(
        cropped, transform.transforms[1](picture.resize((75, 50), Image.BICUBIC))[:, :42, :70]
    )
    # The resize a method applies to a file's pixels is the loader's.
    whole = load_image(str(tmp_path / "a.png"), None)
    torch.testing.assert_close(resize_image(whole, 50, "shorter_side", 14), cropped, rtol=0, atol=0)
    # squash is what it was: PIL's bicubic to size x size.
    squashed = torch.from_numpy(np.asarray(picture.resize((56, 56), Image.BICUBIC), np.float32) / 255)
    torch.testing.assert_close(
        load_image(str(tmp_path / "a.png"), 56), squashed.permute(2, 0, 1), rtol=0, atol=0
    )


def test_masks_follow_the_geometry_or_keep_the_files_resolution(tmp_path):
    mask = np.zeros((100, 150), np.uint8)
    mask[10:60, 20:90] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    full, original = load_mask(str(tmp_path / "m.png"), None)
    assert original == (150, 100) and full.shape == (100, 150)
    assert torch.equal(full, torch.from_numpy(mask > 0).float())
    shorter, _ = load_mask(str(tmp_path / "m.png"), 50, geometry="shorter_side", multiple=14)
    assert shorter.shape == (42, 70)
    assert load_mask(str(tmp_path / "m.png"), 50)[0].shape == (50, 50)


def test_file_resolution_batches_one_size_with_maps_and_masks_at_it(tmp_path):
    sizes = {"a0": (150, 100), "a1": (150, 100), "a2": (150, 100), "g0": (150, 100), "g1": (150, 100)}
    source = _dataset(tmp_path, sizes)
    data = AnomalyDataModule(
        source, 56, batch_size=3, geometry="shorter_side", crop_multiple=14, evaluation_resolution="file"
    )
    batches = list(data.category_test_dataloader("widget"))
    assert [len(batch) for batch in batches] == [3, 2]
    for batch in batches:  # 150x100 -> 84x56 inputs; maps and masks at the files' 100x150
        assert batch.image.shape[-2:] == (56, 84) and batch.map_size == (100, 150)
        assert batch.mask.shape[-2:] == (100, 150)
    assert batches[0].mask.sum() > 0 and batches[1].mask.sum() == 0  # crack a0..a2 first, then good
    sample = source.samples("widget", "test")[0]
    assert batches[0].digest[0] == f"{file_digest(sample.path)}:shorter_side:14" == data.input_digest(sample)
    references = data.load_images(source.samples("widget", "train"))
    assert references.shape == (2, 3, 56, 84)


def test_a_category_whose_maps_would_differ_in_size_is_refused_before_scoring(tmp_path):
    source = _dataset(tmp_path, {"a0": (150, 100), "a1": (120, 100), "g0": (150, 100)})
    for options, listed in [
        ({"evaluation_resolution": "file"}, "120x100, 150x100"),
        ({"geometry": "shorter_side", "crop_multiple": 14}, "56x56, 84x56"),  # 120x100 -> 67x56 -> 56x56
    ]:
        data = AnomalyDataModule(source, 56, **options)
        with pytest.raises(DataError, match=rf"category 'widget' holds files of several sizes \({listed} px"):
            data.category_test_dataloader("widget")
    # The same shape after the resize passes: 150x100 and 153x102 both give 84x56 inputs.
    square = _dataset(tmp_path / "other", {"a0": (150, 100), "a1": (153, 102)})
    data = AnomalyDataModule(square, 56, geometry="shorter_side", crop_multiple=14)
    assert [tuple(b.image.shape[-2:]) for b in data.category_test_dataloader("widget")] == [(56, 84)]


def test_squash_loaders_are_unchanged(tmp_path):
    source = _dataset(tmp_path, {"a0": (150, 100), "a1": (120, 100), "g0": (150, 100)})
    data = AnomalyDataModule(source, 56, batch_size=8)
    (batch,) = list(data.category_test_dataloader("widget"))
    assert batch.image.shape == (3, 3, 56, 56) and batch.mask.shape == (3, 56, 56) and batch.map_size is None
    assert batch.digest[0] == file_digest(source.samples("widget", "test")[0].path)


def test_geometry_options_are_checked(tmp_path):
    source = _dataset(tmp_path, {"a0": (150, 100)})
    with pytest.raises(DataError, match="datamodule.geometry='crop'"):
        AnomalyDataModule(source, 56, geometry="crop")
    with pytest.raises(DataError, match="datamodule.evaluation_resolution='full'"):
        AnomalyDataModule(source, 56, evaluation_resolution="full")
    with pytest.raises(DataError, match="test_corruption"):
        AnomalyDataModule(source, 56, test_corruption="blur", evaluation_resolution="file")
