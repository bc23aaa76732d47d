import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.checks import check_image_file
from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.data.image_io import load_image

RNG = np.random.default_rng(0)


def _rgb(height=24, width=32) -> np.ndarray:
    return RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_folder(root: Path, category="widget", masks=True) -> Path:
    folder = root / category
    for i in range(3):
        _save(folder / "train" / "good" / f"{i}.png", _rgb())
    _save(folder / "test" / "good" / "ok.png", _rgb())
    for i in range(2):
        _save(folder / "test" / "dent" / f"{i}.png", _rgb())
        if masks:
            mask = np.zeros((24, 32), np.uint8)
            mask[4:12, 4:12] = 255
            _save(folder / "ground_truth" / "dent" / f"{i}_mask.png", mask)
    return root


def test_every_common_format_and_mode_reads_as_rgb(tmp_path):
    rgb = _rgb()
    gray = rgb[..., 0]
    files = {
        "gray.png": _save(tmp_path / "gray.png", gray),
        "rgba.png": _save(tmp_path / "rgba.png", np.dstack([rgb, np.full(gray.shape, 255, np.uint8)])),
        "palette.png": tmp_path / "palette.png",
        "sixteen.png": tmp_path / "sixteen.png",
        "photo.jpg": _save(tmp_path / "photo.jpg", rgb, quality=95),
        "bitmap.bmp": _save(tmp_path / "bitmap.bmp", rgb),
        "scan.tif": _save(tmp_path / "scan.tif", rgb),
        "gray.tiff": _save(tmp_path / "gray.tiff", gray),
    }
    Image.fromarray(rgb).convert("P").save(files["palette.png"])
    Image.fromarray(gray.astype(np.uint16) * 257).save(files["sixteen.png"])  # 16-bit, full range
    for name, path in files.items():
        check_image_file(path)
        image = load_image(str(path), 16)
        assert image.shape == (3, 16, 16), name
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, name
        assert float(image.max()) > 0.5, name  # not collapsed to black (16-bit scaled correctly)
    # 16-bit and 8-bit versions of the same picture read the same.
    sixteen, eight = load_image(str(files["sixteen.png"]), 16), load_image(str(files["gray.png"]), 16)
    assert torch.allclose(sixteen, eight, atol=1 / 255)


def test_folder_with_masks_and_several_categories(tmp_path):
    make_folder(tmp_path, "widget")
    make_folder(tmp_path, "gadget", masks=False)
    source = FolderDataset(tmp_path)
    assert source.categories == ["gadget", "widget"]
    assert source.has_masks("widget") and not source.has_masks("gadget")
    test = source.samples("widget", "test")
    assert [s.defect_type for s in test] == ["dent", "dent", "good"]
    # Without masks the dataset yields mask=None, so the evaluator reports pixel metrics as absent.
    loader_items = AnomalyImageDataset(source.samples("gadget", "test"), 16, with_masks=False)
    assert loader_items[0]["mask"] is None


def test_single_category_folder_and_class_names(tmp_path):
    make_folder(tmp_path, "widget")
    source = FolderDataset(tmp_path / "widget", class_names={"widget": "metal bracket"})
    assert source.categories == ["widget"]
    assert source.class_names == {"widget": "metal bracket"}
    with pytest.raises(DataError, match=r"data.class_names: \['gizmo'\] not in dataset 'folder'. Valid"):
        _ = FolderDataset(tmp_path, class_names={"gizmo": "x"}).class_names


def test_partial_masks_name_the_image_and_the_expected_mask(tmp_path):
    make_folder(tmp_path)
    missing = tmp_path / "widget" / "ground_truth" / "dent" / "1_mask.png"
    missing.unlink()
    with pytest.raises(DataError, match=f"test/dent/1.png has no mask; expected {missing}"):
        FolderDataset(tmp_path).has_masks("widget")
    with pytest.raises(DataError, match=f"test/dent/1.png has no mask; expected {missing}"):
        FolderDataset(tmp_path, require_masks=True).samples("widget", "test")


def test_missing_empty_and_unknown(tmp_path):
    with pytest.raises(DataError, match="dataset root does not exist: .*absent"):
        _ = FolderDataset(tmp_path / "absent").categories
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset root is empty: .*empty"):
        _ = FolderDataset(tmp_path / "empty").categories
    make_folder(tmp_path / "data")
    valid = r"\['gizmo'\] not in dataset 'folder'. Valid categories: \['widget'\]"
    with pytest.raises(DataError, match=valid):
        _ = FolderDataset(tmp_path / "data", categories=["gizmo"]).categories


def test_mask_of_another_size_is_resized_with_a_warning(tmp_path, caplog):
    make_folder(tmp_path)
    mask = np.zeros((48, 64), np.uint8)  # twice the image size
    mask[8:24, 8:24] = 255
    _save(tmp_path / "widget" / "ground_truth" / "dent" / "0_mask.png", mask)
    sample = FolderDataset(tmp_path).samples("widget", "test")[0]
    with caplog.at_level(logging.WARNING):
        item = AnomalyImageDataset([sample], 16)[0]
    assert "is 64x48 but its image" in caplog.text and sample.path in caplog.text
    assert item["mask"].shape == (16, 16) and item["mask"].sum() > 0


@pytest.mark.parametrize("kind", ["png", "jpg", "bmp"])
def test_truncated_image_is_reported_by_name_before_loading(tmp_path, kind):
    path = _save(tmp_path / f"cut.{kind}", _rgb(64, 64), **({"quality": 90} if kind == "jpg" else {}))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=f"cannot read image {path}"):
        check_image_file(path)
    with pytest.raises(DataError, match=f"cannot read image {path}"):
        load_image(str(path), 16)


def test_unreadable_and_trailing_bytes(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"cannot read image {junk}"):
        check_image_file(junk)
    # Some cameras append bytes after the JPEG end marker: still a valid image.
    padded = _save(tmp_path / "padded.jpg", _rgb(), quality=90)
    padded.write_bytes(padded.read_bytes() + b"\x00" * 32)
    check_image_file(padded)
