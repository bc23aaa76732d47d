"""Sweep folder naming: deterministic, '/'-free, derived from the non-swept overrides."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from anomaly_vlm.resolvers import (
    DEFAULT_SWEEP_NAME,
    remove_untouched_job_folder,
    sanitize_dirname,
    sweep_folder_name,
)


def test_swept_and_neutral_overrides_do_not_name_the_sweep() -> None:
    overrides = ["method=winclip,aprillab", "backbone=tiny", "shots=0,1,2,4", "seed=range(3)", "logger=wandb"]
    assert sweep_folder_name(overrides) == "backbone=tiny"
    # The same sweep with more swept values, or the overrides in another order, lands in the same folder.
    assert sweep_folder_name(["seed=0,1", "backbone=tiny", "shots=1,8"]) == "backbone=tiny"
    assert sweep_folder_name(["data=mvtec", "backbone=tiny"]) == "backbone=tiny,data=mvtec"


def test_explicit_name_and_default() -> None:
    assert sweep_folder_name(["backbone=tiny"], sweep_name="paper/table1") == "paper_table1"
    assert sweep_folder_name(["seed=0,1"]) == DEFAULT_SWEEP_NAME
    assert sweep_folder_name([]) == DEFAULT_SWEEP_NAME


def test_sanitize_removes_separators_and_bounds_length() -> None:
    assert sanitize_dirname("data.root=/x/y,seed=1") == "data.root=_x_y,seed=1"
    long = sanitize_dirname("a=" + "x" * 400)
    assert len(long) == 200 and long == sanitize_dirname("a=" + "x" * 400)
    assert long != sanitize_dirname("a=" + "x" * 399 + "y")  # the hash keeps distinct names distinct
    assert sanitize_dirname("") == DEFAULT_SWEEP_NAME


def _hydra_job_folder(root: Path, log: str = "") -> Path:
    """A job folder as Hydra leaves it before the job runs: .hydra/ with its three files, the job log."""
    folder = root / "multiruns" / "sweep" / "shots=0,reference_seed=1"
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text("x: 1\n")
    (folder / "train.log").write_text(log)
    (folder.parent / "multirun.yaml").write_text("hydra: {}\n")
    return folder


def test_a_job_folder_holding_only_what_hydra_wrote_is_removed(tmp_path: Path) -> None:
    folder = _hydra_job_folder(tmp_path, log="[WARNING] - ... is skipped\n")
    (folder / "wandb" / "empty").mkdir(parents=True)  # empty folders the job made count as nothing
    assert remove_untouched_job_folder(folder, "train.log", log_may_hold_lines=True)
    assert not folder.exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["multirun.yaml"]  # the sweep folder stays


def test_a_failed_job_keeps_its_folder_when_its_log_says_something(tmp_path: Path) -> None:
    empty = _hydra_job_folder(tmp_path / "a")
    assert remove_untouched_job_folder(empty, "train.log", log_may_hold_lines=False)
    said = _hydra_job_folder(tmp_path / "b", log="[INFO] - loading weights\n")
    assert not remove_untouched_job_folder(said, "train.log", log_may_hold_lines=False)
    assert (said / "train.log").read_text() == "[INFO] - loading weights\n"


@pytest.mark.parametrize(
    "extra",
    [
        "results.json",
        "checkpoints/last.ckpt",
        "notes.txt",
        ".hydra/my_notes.yaml",
        "wandb/offline-run-1/run.wandb",
        "other.log",
    ],
)
def test_anything_the_job_or_a_person_wrote_keeps_the_whole_folder(tmp_path: Path, extra: str) -> None:
    folder = _hydra_job_folder(tmp_path, log="line\n")
    (folder / extra).parent.mkdir(parents=True, exist_ok=True)
    (folder / extra).write_text("keep me")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert not remove_untouched_job_folder(folder, "train.log", log_may_hold_lines=True)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_a_link_is_never_followed_or_removed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _hydra_job_folder(tmp_path / "run")
    (folder / "data").symlink_to(outside, target_is_directory=True)
    assert not remove_untouched_job_folder(folder, "train.log", log_may_hold_lines=True)
    assert outside.is_dir() and (folder / "data").is_symlink()
    linked = tmp_path / "linked_job"
    linked.symlink_to(_hydra_job_folder(tmp_path / "target"), target_is_directory=True)
    assert not remove_untouched_job_folder(linked, "train.log", log_may_hold_lines=True)
    assert linked.is_symlink() and (linked / ".hydra" / "config.yaml").is_file()


def test_the_job_log_handler_is_closed_before_its_file_is_removed(tmp_path: Path) -> None:
    folder = _hydra_job_folder(tmp_path)
    handler = logging.FileHandler(folder / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        assert remove_untouched_job_folder(folder, "train.log", log_may_hold_lines=True)
        assert handler not in root.handlers and handler.stream is None
    finally:
        root.removeHandler(handler)
        handler.close()
    assert not folder.exists()
