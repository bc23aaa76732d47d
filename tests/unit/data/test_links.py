"""Symlinks in dataset folders: read, reported once per root when they lead outside, never written through."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.data.datasets.images import ImageFiles
from anomaly_vlm.data.image_io import load_image
from anomaly_vlm.data.links import open_new, outside_links
from anomaly_vlm.data.toy import MANIFEST_NAME, generate_synthetic_dataset
from anomaly_vlm.data.toy.cache import _LOCK_NAME, _PENDING_NAME, _write_json

LOGGER = "anomaly_vlm.data.links"


def _save(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def _dataset_with_links(tmp_path: Path) -> tuple[Path, Path]:
    """``data/widget`` with two file links and one folder link leading outside, one link inside."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _save(root / "widget" / "train" / "good" / "0.png")
    good = root / "widget" / "test" / "good"
    _save(good / "0.png")
    (good / "1.png").symlink_to(_save(elsewhere / "outside_1.png", 200))
    (good / "2.png").symlink_to(_save(elsewhere / "outside_2.png", 100))
    (good / "3.png").symlink_to(good / "0.png")  # inside the root: not reported
    (root / "widget" / "test" / "dent").symlink_to(elsewhere / "dent", target_is_directory=True)
    _save(elsewhere / "dent" / "0.png", 50)
    return root, elsewhere


def _link_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_links_leading_outside_the_root_are_read_and_reported_once(tmp_path, caplog):
    root, elsewhere = _dataset_with_links(tmp_path)
    source = FolderDataset(root)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert source.categories == ["widget"]
        samples = source.samples("widget", "test")
        assert source.categories == ["widget"]  # listing again does not warn again
    paths = sorted(sample.path for sample in samples)
    assert str(root / "widget" / "test" / "good" / "1.png") in paths
    assert str(root / "widget" / "test" / "dent" / "0.png") in paths
    # Followed: the pixels are the target's.
    assert load_image(str(root / "widget" / "test" / "good" / "1.png"), 8).mean() == pytest.approx(200 / 255)
    messages = _link_warnings(caplog)
    assert len(messages) == 1
    first = root / "widget" / "test" / "dent"
    assert f"dataset root {root} holds 3 symlink(s) that lead outside it" in messages[0]
    assert f"First: {first} -> {(elsewhere / 'dent').resolve()}" in messages[0]


def test_links_inside_the_root_and_hidden_ones_are_not_reported(tmp_path, caplog):
    root = tmp_path / "data"
    good = root / "widget" / "test" / "good"
    _save(good / "0.png")
    (good / "1.png").symlink_to(good / "0.png")
    (root / ".cache").symlink_to(tmp_path, target_is_directory=True)
    assert outside_links(root) == []
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert FolderDataset(root).categories == ["widget"]
    assert _link_warnings(caplog) == []


def test_unlabelled_images_report_links_of_their_folder(tmp_path, caplog):
    folder = tmp_path / "images"
    _save(folder / "a.png")
    (folder / "b.png").symlink_to(_save(tmp_path / "other" / "b.png"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        source = ImageFiles(folder)
        assert len(source.samples(source.categories[0], "test")) == 2
    assert len(_link_warnings(caplog)) == 1 and "holds 1 symlink(s)" in _link_warnings(caplog)[0]


def test_writes_into_a_generated_dataset_never_go_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "synthetic"
    root.mkdir()
    victims = {name: outside / name for name in ("lock", "manifest", "pending", "tmp", "category")}
    for victim in victims.values():
        victim.write_text("keep")
    (root / _LOCK_NAME).symlink_to(victims["lock"])
    (root / f"{MANIFEST_NAME}.tmp").symlink_to(victims["tmp"])
    (root / _PENDING_NAME).symlink_to(victims["pending"])
    (root / MANIFEST_NAME).symlink_to(victims["manifest"])
    generate_synthetic_dataset(
        root, ["disc"], image_size=32, num_train=1, num_test_good=1, num_test_per_defect=1
    )
    assert all(victim.read_text() == "keep" for victim in victims.values())
    assert not (root / _LOCK_NAME).is_symlink() and not (root / MANIFEST_NAME).is_symlink()
    assert json.loads((root / MANIFEST_NAME).read_text())["args"]["categories"] == ["disc"]

    # A link in a category's place is in the way like a foreign folder: refused, or removed with overwrite.
    other = tmp_path / "other_root"
    other.mkdir()
    (other / "disc").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FileExistsError, match="disc"):
        generate_synthetic_dataset(
            other, ["disc"], image_size=32, num_train=1, num_test_good=1, num_test_per_defect=1
        )
    generate_synthetic_dataset(
        other, ["disc"], image_size=32, num_train=1, num_test_good=1, num_test_per_defect=1, overwrite=True
    )
    assert not (other / "disc").is_symlink() and (other / "disc" / "train" / "good").is_dir()
    assert sorted(path.name for path in outside.iterdir()) == sorted(victims)


def test_open_new_replaces_a_link_and_write_json_renames_over_one(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with open_new(link) as handle:
        handle.write("new")
    assert target.read_text() == "keep" and not link.is_symlink() and link.read_text() == "new"
    manifest = tmp_path / "manifest.json"
    manifest.symlink_to(target)
    _write_json(manifest, {"a": 1})
    assert target.read_text() == "keep" and json.loads(manifest.read_text()) == {"a": 1}
