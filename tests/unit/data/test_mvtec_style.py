"""A new MVTec-style dataset is a few class attributes of the one layout base, and one lister finds images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_vlm.data import DataError, MVTecLayout
from anomaly_vlm.data.image_io import list_images


class Parts(MVTecLayout):
    name = "parts"
    title = "Parts"
    known_categories = ("nut", "bolt")
    normal_folder = "ok"
    test_folder = "eval"
    ground_truth = "masks"
    mask_suffixes = ("_gt", "")
    default_class_names = {"nut": "hex nut"}


def _image(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _parts(root: Path) -> Path:
    for category in ("bolt", "nut", "washer"):  # washer: not a known category
        base = root / category
        _image(base / "train" / "ok" / "0.png")
        _image(base / "train" / "ok" / "1.png")
        _image(base / "eval" / "ok" / "0.png")
        _image(base / "eval" / "scratch" / "0.png", 200)
        _image(base / "eval" / "scratch" / "1.png", 200)
        _image(base / "masks" / "scratch" / "0_gt.png", 255)
        _image(base / "masks" / "scratch" / "1.png", 255)  # the second suffix
    return root


def test_a_dataset_of_class_attributes_only_reads_its_layout(tmp_path):
    root = _parts(tmp_path / "parts")
    source = Parts(root)
    assert source.categories == ["nut", "bolt"]  # the known order; washer is not one of them
    assert source.class_names == {"nut": "hex nut"}
    assert Parts(root, class_names={"bolt": "bolt"}).class_names == {"nut": "hex nut", "bolt": "bolt"}

    test = source.samples("bolt", "test")
    assert [(Path(s.path).relative_to(root).as_posix(), s.label, s.defect_type) for s in test] == [
        ("bolt/eval/ok/0.png", 0, "good"),
        ("bolt/eval/scratch/0.png", 1, "scratch"),
        ("bolt/eval/scratch/1.png", 1, "scratch"),
    ]
    masks = [Path(s.mask_path).relative_to(root).as_posix() for s in test if s.label == 1]
    assert masks == ["bolt/masks/scratch/0_gt.png", "bolt/masks/scratch/1.png"]
    assert source.has_masks("bolt")
    train = source.samples("nut", "train")
    assert [(s.label, s.defect_type, s.mask_path) for s in train] == [(0, "good", None)] * 2

    with pytest.raises(DataError, match=r"data.categories: \['washer'\] not in dataset 'parts'"):
        _ = Parts(root, categories=["washer"]).categories

    (root / "nut" / "masks" / "scratch" / "1.png").unlink()
    with pytest.raises(DataError, match=r"^Parts: anomalous test image .*scratch/1\.png has no mask"):
        Parts(root).samples("nut", "test")
    optional = Parts(root, require_masks=False)
    with pytest.raises(DataError, match="pixel metrics need all or none"):
        optional.has_masks("nut")


def test_positional_mask_pairing_is_a_class_attribute(tmp_path):
    root = _parts(tmp_path / "parts")
    for mask in (root / "bolt" / "masks" / "scratch").iterdir():
        mask.rename(mask.with_name(f"label_{mask.name}"))  # names that match no image

    class PairedParts(Parts):
        pair_masks_by_position = True

    test = PairedParts(root).samples("bolt", "test")
    assert [Path(s.mask_path).name for s in test if s.label == 1] == ["label_0_gt.png", "label_1.png"]
    with pytest.raises(DataError, match="has no mask"):
        Parts(root).samples("bolt", "test")


def test_root_may_be_one_category_folder_when_the_class_says_so(tmp_path):
    root = _parts(tmp_path / "parts")

    class OneFolder(Parts):
        known_categories = None
        root_may_be_category = True

    assert OneFolder(root / "washer").categories == ["washer"]
    assert Parts(root / "washer").root == root / "washer"


def test_one_image_lister_skips_hidden_files_and_folders(tmp_path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "notes.txt", "sub/c.bmp", ".cache/d.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert found == ["a.jpg", "b.PNG", "sub/c.bmp"]
    assert list_images(tmp_path / "absent") == []
