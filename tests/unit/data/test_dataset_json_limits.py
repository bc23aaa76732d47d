"""Dataset descriptions handed over with a dataset (``meta.json``, Real-IAD split files) are read within
size and nesting limits (``anomaly_vlm.untrusted.read_json``); a refusal is a DataError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomaly_vlm.data import DataError
from anomaly_vlm.data.datasets import MetaJSON, RealIAD

SPARSE_BYTES = 300 * 1024 * 1024  # over the 256 MB limit; a sparse file takes no disk space


def _sparse(path: Path, size: int = SPARSE_BYTES) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def _deep(depth: int = 1000) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_meta_json_is_a_data_error_naming_the_file(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text('{"test": {"bottle": ' + _deep() + "}}")
    with pytest.raises(DataError, match=rf"meta\.json {meta} nests 100\d levels deep, over the limit"):
        _ = MetaJSON(tmp_path).categories


def test_an_oversized_meta_json_is_refused_unread(tmp_path, monkeypatch):
    meta = _sparse(tmp_path / "meta.json")
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    with pytest.raises(DataError, match=rf"meta\.json {meta} is 314\.6 MB, over the 268 MB limit"):
        _ = MetaJSON(tmp_path).categories


def test_a_meta_json_that_is_not_json_still_names_the_file(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text("{not json")
    with pytest.raises(DataError, match=rf"meta\.json {meta} is not valid JSON"):
        _ = MetaJSON(tmp_path).categories


def test_realiad_split_files_are_bounded(layouts, tmp_path):
    root = layouts.make_realiad(tmp_path / "realiad")
    split = root / "realiad_jsons_sv" / "toy.json"
    split.write_text('{"meta": {}, "train": ' + _deep() + ', "test": []}')
    source = RealIAD(root)
    assert source.samples("audiojack", "test")  # the other category's file is fine
    with pytest.raises(DataError, match=rf"Real-IAD split file {split} nests 100\d levels deep"):
        source.samples("toy", "test")
    _sparse(split)
    with pytest.raises(DataError, match=rf"Real-IAD split file {split} is 314\.6 MB, over the 268 MB limit"):
        RealIAD(root).samples("toy", "train")


def test_a_realiad_split_file_of_the_wrong_shape_is_one_data_error(layouts, tmp_path):
    root = layouts.make_realiad(tmp_path / "realiad")
    split = root / "realiad_jsons_sv" / "toy.json"
    split.write_text(json.dumps({"meta": [], "train": [], "test": []}))
    with pytest.raises(DataError, match=rf"{split}: expected 'meta' to be an object"):
        RealIAD(root).samples("toy", "test")
