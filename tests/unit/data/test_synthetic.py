"""Tests for the procedurally generated MVTec-layout dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from anomaly_vlm.data import toy
from anomaly_vlm.data.toy import (
    DEFECT_AREA_RANGE,
    DEFECT_TYPES,
    MANIFEST_NAME,
    SYNTHETIC_CATEGORIES,
    default_synthetic_root,
    generate_synthetic_dataset,
    render_sample,
)

SMALL = {"image_size": 64, "num_train": 2, "num_test_good": 1, "num_test_per_defect": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset with default arguments, generated once for the read-only tests."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"))


def test_public_constants() -> None:
    assert len(SYNTHETIC_CATEGORIES) >= 4
    assert set(toy.TEXTURE_CATEGORIES) | set(toy.OBJECT_CATEGORIES) == set(SYNTHETIC_CATEGORIES)
    assert toy.TEXTURE_CATEGORIES and toy.OBJECT_CATEGORIES
    assert len(DEFECT_TYPES) >= 3


def test_layout_is_exactly_mvtec(default_root: Path) -> None:
    assert _names(default_root) - {".synthetic.lock"} == set(SYNTHETIC_CATEGORIES) | {MANIFEST_NAME}
    for cat in SYNTHETIC_CATEGORIES:
        base = default_root / cat
        assert _names(base) == {"train", "test", "ground_truth"}
        assert _names(base / "train") == {"good"}
        assert _names(base / "test") == {"good", *DEFECT_TYPES}
        assert _names(base / "ground_truth") == set(DEFECT_TYPES)
        assert _names(base / "train" / "good") == {f"{i:03d}.png" for i in range(8)}
        assert _names(base / "test" / "good") == {f"{i:03d}.png" for i in range(4)}
        for defect in DEFECT_TYPES:
            assert _names(base / "test" / defect) == {f"{i:03d}.png" for i in range(3)}
            assert _names(base / "ground_truth" / defect) == {f"{i:03d}_mask.png" for i in range(3)}


def test_images_rgb_and_masks_binary_nonempty_in_area_range(default_root: Path) -> None:
    lo, hi = DEFECT_AREA_RANGE
    for image_path in default_root.glob("*/t*/*/*.png"):
        with Image.open(image_path) as image:
            assert image.mode == "RGB" and image.size == (128, 128), image_path
    for cat in SYNTHETIC_CATEGORIES:
        for defect in DEFECT_TYPES:
            for i in range(3):
                with Image.open(default_root / cat / "ground_truth" / defect / f"{i:03d}_mask.png") as mask:
                    assert mask.mode == "L" and mask.size == (128, 128)
                    values = np.asarray(mask)
                assert set(np.unique(values)) <= {0, 255}
                assert lo <= (values > 0).mean() <= hi, (cat, defect, i, (values > 0).mean())


def test_normal_images_vary(default_root: Path) -> None:
    for cat in SYNTHETIC_CATEGORIES:
        images = [
            np.asarray(Image.open(p), np.float32)
            for p in sorted((default_root / cat / "train/good").iterdir())
        ]
        for a, b in zip(images[:-1], images[1:], strict=True):
            assert np.abs(a - b).mean() > 1.0, cat


def test_manifest_records_version_and_arguments(default_root: Path) -> None:
    manifest = json.loads((default_root / MANIFEST_NAME).read_text())
    assert manifest["version"] == toy.GENERATOR_VERSION
    assert manifest["args"] == {
        "categories": list(SYNTHETIC_CATEGORIES),
        "image_size": [128, 128],
        "num_train": 8,
        "num_test_good": 4,
        "num_test_per_defect": 3,
        "seed": 0,
    }


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_mask_marks_exactly_the_changed_pixels(category: str, defect: str) -> None:
    cat_idx = SYNTHETIC_CATEGORIES.index(category)
    for index in range(3):
        rng = np.random.default_rng([7, cat_idx, 2 + DEFECT_TYPES.index(defect), index])
        scene = toy._render_scene(category, rng, 96, 96)
        image, mask = toy._apply_defect(defect, rng, scene)
        changed = np.abs(image - scene.image).max(axis=-1)
        assert mask.any()
        assert (changed[mask] > 1e-3).mean() > 0.95
        # Soft stain edges fade out within a few pixels of the annotated region, never further.
        assert not changed[~ndimage.binary_dilation(mask, iterations=8)].any()
        if category in toy.OBJECT_CATEGORIES:
            assert scene.support[mask].min() >= 0.5  # defects stay on the object


def test_defect_strength_ranges_from_subtle_to_obvious() -> None:
    contrasts = []
    for category in SYNTHETIC_CATEGORIES:
        for index in range(4):
            rng = np.random.default_rng([0, SYNTHETIC_CATEGORIES.index(category), 3, index])
            scene = toy._render_scene(category, rng, 96, 96)
            image, mask = toy._apply_defect("stain", rng, scene)
            contrasts.append(np.abs(image - scene.image)[mask].mean())
    assert min(contrasts) < 0.08 < 0.2 < max(contrasts)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_synthetic_dataset(tmp_path / "a", seed=3, **SMALL))
    b = _files(generate_synthetic_dataset(tmp_path / "b", seed=3, **SMALL))
    c = _files(generate_synthetic_dataset(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png") and "ground_truth" not in k]
    assert all(a[k] != c[k] for k in pngs)


def test_category_subset_matches_full_set(tmp_path: Path) -> None:
    full = _files(generate_synthetic_dataset(tmp_path / "full", **SMALL))
    only = _files(generate_synthetic_dataset(tmp_path / "nut", categories=["nut"], **SMALL))
    assert {k: v for k, v in only.items() if k.startswith("nut/")} == {
        k: v for k, v in full.items() if k.startswith("nut/")
    }


def test_render_sample_matches_files_on_disk(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, categories=["disc"], seed=5, **SMALL)
    image, mask = render_sample("disc", "hole", image_size=64, seed=5, index=1)
    np.testing.assert_array_equal(image, np.asarray(Image.open(root / "disc/test/hole/001.png")))
    np.testing.assert_array_equal(mask, np.asarray(Image.open(root / "disc/ground_truth/hole/001_mask.png")))
    image, mask = render_sample("disc", None, image_size=64, seed=5, index=1, split="train")
    assert mask is None
    np.testing.assert_array_equal(image, np.asarray(Image.open(root / "disc/train/good/001.png")))


def test_second_call_with_same_arguments_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    root = generate_synthetic_dataset(tmp_path / "data", categories=["brick", "disc"], **SMALL)
    before = _stamps(root)

    def fail(*args, **kwargs):
        raise AssertionError("cache hit must not render")

    monkeypatch.setattr(toy, "_write_category", fail)
    assert generate_synthetic_dataset(tmp_path / "data", categories=["brick", "disc"], **SMALL) == root
    assert _stamps(root) == before


def test_changed_arguments_regenerate_and_remove_old_output(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_synthetic_dataset(root, categories=["brick", "disc"], **SMALL)
    (root / "notes.txt").write_text("not ours")
    generate_synthetic_dataset(root, categories=["disc"], **{**SMALL, "num_train": 3, "image_size": 48})
    assert not (root / "brick").exists()
    assert (root / "notes.txt").read_text() == "not ours"
    assert len(list((root / "disc/train/good").iterdir())) == 3
    assert Image.open(root / "disc/test/good/000.png").size == (48, 48)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["args"]["categories"] == ["disc"] and manifest["args"]["num_train"] == 3
    assert not list(root.glob(".synthetic-tmp-*"))


def test_overwrite_regenerates_even_when_cached(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, categories=["grass"], **SMALL)
    marker = root / "grass" / "train" / "good" / "extra.png"
    marker.write_bytes(b"stale")
    generate_synthetic_dataset(root, categories=["grass"], overwrite=True, **SMALL)
    assert not marker.exists()
    assert (root / "grass/train/good/000.png").exists()


def test_crashed_generation_is_not_taken_as_complete(tmp_path: Path, monkeypatch) -> None:
    real = toy._write_category

    def crash_on_second(folder, category, *args):
        if category == "disc":
            raise RuntimeError("simulated crash")
        real(folder, category, *args)

    monkeypatch.setattr(toy, "_write_category", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_synthetic_dataset(tmp_path, categories=["brick", "disc"], **SMALL)
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert not (tmp_path / "brick").exists()  # nothing half-written is left in the layout
    monkeypatch.setattr(toy, "_write_category", real)
    generate_synthetic_dataset(tmp_path, categories=["brick", "disc"], **SMALL)
    assert (tmp_path / MANIFEST_NAME).exists()
    assert len(list((tmp_path / "disc/test/hole").iterdir())) == 2


def test_interrupted_move_is_cleaned_up(tmp_path: Path) -> None:
    # State left by a crash after the folders were moved in but before the manifest was written.
    generate_synthetic_dataset(tmp_path, categories=["gravel"], **SMALL)
    (tmp_path / MANIFEST_NAME).unlink()
    (tmp_path / ".synthetic.pending.json").write_text(json.dumps({"categories": ["gravel"]}))
    (tmp_path / "gravel" / "train" / "good" / "stale.png").write_bytes(b"stale")
    generate_synthetic_dataset(tmp_path, categories=["gravel"], **SMALL)
    assert not (tmp_path / "gravel/train/good/stale.png").exists()
    assert not (tmp_path / ".synthetic.pending.json").exists()


def test_foreign_category_folder_is_not_deleted_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "brick").mkdir()
    (tmp_path / "brick" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path, categories=["brick"], **SMALL)
    assert (tmp_path / "brick" / "mine.txt").read_text() == "user data"
    generate_synthetic_dataset(tmp_path, categories=["brick"], overwrite=True, **SMALL)
    assert not (tmp_path / "brick" / "mine.txt").exists()


def test_non_square_size(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(
        tmp_path, categories=["grass", "nut"], **{**SMALL, "image_size": (48, 80)}
    )
    for cat in ("grass", "nut"):
        assert Image.open(root / cat / "test/stain/000.png").size == (80, 48)
        assert Image.open(root / cat / "ground_truth/stain/000_mask.png").size == (80, 48)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"categories": ["carpet"]},
        {"categories": []},
        {"categories": ["disc", "disc"]},
        {"num_train": 0},
        {"seed": -1},
        {"image_size": 8},
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, **kwargs)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_default_root(monkeypatch, tmp_path: Path) -> None:
    assert default_synthetic_root(tmp_path) == tmp_path / "synthetic"
    monkeypatch.setenv("ANOMALY_VLM_CACHE", str(tmp_path / "env"))
    assert default_synthetic_root() == tmp_path / "env" / "synthetic"
    monkeypatch.delenv("ANOMALY_VLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_synthetic_root() == tmp_path / "xdg" / "anomaly_vlm" / "synthetic"
