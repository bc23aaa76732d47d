"""Sweep folder naming: deterministic, '/'-free, derived from the non-swept overrides."""

from __future__ import annotations

from anomaly_vlm.resolvers import DEFAULT_SWEEP_NAME, sanitize_dirname, sweep_folder_name


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
