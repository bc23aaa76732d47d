"""A folder with several unusable files names them all in one error (the first ten, then a count)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.batch import Sample
from anomaly_vlm.data.checks import LISTED_FILES, check_samples, preflight


def _good(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (90, 90, 90)).save(path)
    return path


def _bad(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image")
    return path


def _samples(paths, label: int = 0) -> list[Sample]:
    return [Sample(str(path), "widget", label) for path in paths]


def test_one_bad_file_keeps_its_own_message(tmp_path):
    bad = _bad(tmp_path / "b.png")
    with pytest.raises(DataError, match=rf"^cannot read image {bad}: cannot identify image file"):
        check_samples(_samples([_good(tmp_path / "a.png"), bad]))


def test_every_bad_file_is_counted_and_the_first_ten_named(tmp_path):
    good = _good(tmp_path / "ok.png")
    bad = [_bad(tmp_path / f"bad{i:02d}.jpg") for i in range(12)]
    truncated = tmp_path / "cut.png"
    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    noise.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    missing = tmp_path / "gone.png"
    with pytest.raises(DataError) as error:
        check_samples(_samples([good, *bad, truncated, missing]))
    message = str(error.value)
    assert message.startswith("14 files cannot be used: cannot read image ")
    assert message.endswith("; and 4 more")
    named = [path for path in (*bad, truncated, missing) if str(path) in message]
    assert named == bad[:LISTED_FILES]
    assert f"cannot read image {bad[0]}: cannot identify image file;" in message  # path not repeated


def test_preflight_reports_bad_files_of_every_category_and_split_together(tmp_path):
    test_bad = _bad(tmp_path / "widget" / "test" / "x.png")
    mask_bad = _bad(tmp_path / "widget" / "ground_truth" / "y.png")
    reference_bad = _bad(tmp_path / "widget" / "train" / "z.png")
    other_bad = _bad(tmp_path / "gadget" / "test" / "w.png")
    anomalous = Sample(str(_good(tmp_path / "widget" / "test" / "d.png")), "widget", 1, "dent", str(mask_bad))
    tests = {"widget": [Sample(str(test_bad), "widget", 0), anomalous], "gadget": _samples([other_bad])}
    source = types.SimpleNamespace(samples=lambda category, split: tests[category], max_image_pixels=None)
    datamodule = types.SimpleNamespace(source=source, train_source=None)
    with pytest.raises(DataError, match="^4 files cannot be used") as error:
        preflight(datamodule, ["widget", "gadget"], {"widget": _samples([reference_bad])})
    for path in (test_bad, mask_bad, reference_bad, other_bad):
        assert str(path) in str(error.value)
    assert f"cannot read mask {mask_bad}" in str(error.value)
