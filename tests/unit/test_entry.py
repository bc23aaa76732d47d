"""Command-line mistakes Hydra would report obscurely become one ``error:`` line (anomaly_vlm/entry.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

from anomaly_vlm.entry import command_line_error
from anomaly_vlm.resolvers import available_workers, silence_launcher_schema_warning

ROOT = Path(__file__).resolve().parents[2]


def test_missing_launcher_plugin_names_the_extra():
    message = command_line_error(
        ["-m", "hydra/launcher=slurm"], "train", plugin_installed=lambda module: False
    )
    assert message == (
        "hydra/launcher=slurm needs its Hydra plugin, which is not installed: "
        "pip install -e '.[slurm]' (hydra-submitit-launcher)"
    )
    assert command_line_error(["hydra/launcher=slurm"], "train", plugin_installed=lambda module: True) is None


def test_paths_with_spaces_or_non_ascii_need_quotes():
    message = command_line_error(["data.root=/data/my sets/ü"], "evaluate")
    assert message.startswith("data.root=/data/my sets/ü: Hydra needs values with spaces, non-ASCII")
    assert "\"data.root='/data/my sets/ü'\"" in message
    assert command_line_error(["data.root='/data/my sets/ü'", "data.root=/data/plain"], "evaluate") is None


def test_a_checkpoint_inside_a_multirun_folder_is_shown_quoted():
    path = "outputs/train/multiruns/x/method=aprillab,shots=4/checkpoints/trained.ckpt"
    for argv in ([f"ckpt_path={path}"], ["-m", f"ckpt_path={path}", "shots=1,2"]):
        message = command_line_error(argv, "evaluate")
        assert message == (
            f"ckpt_path={path}: Hydra needs values with spaces, non-ASCII characters or '=' (as in a "
            f"multirun folder's name) in quotes; write \"ckpt_path='{path}'\" "
            "(the outer quotes are for the shell)"
        )
    assert command_line_error([f"ckpt_path='{path}'"], "evaluate") is None
    assert command_line_error(["+ckpt_path=a/it's=1.ckpt"], "evaluate").endswith(
        """write '+ckpt_path="a/it's=1.ckpt"' (the outer quotes are for the shell)"""
    )


def test_a_comma_without_multirun_says_sweep_or_quote():
    message = command_line_error(["data.root=/data/parts,2024"], "train")
    assert message.startswith("data.root=/data/parts,2024: a comma makes Hydra read several values")
    assert "add -m" in message and "\"data.root='/data/parts,2024'\"" in message
    assert command_line_error(["-m", "data.root=/data/parts,/data/other", "seed=0,1"], "train") is None
    assert command_line_error(["seed=0", "method=clip", "method.stages=[2,4]"], "train") is None


def test_the_entry_point_prints_the_quoted_checkpoint_in_one_line(tmp_path):
    path = f"{tmp_path}/multiruns/x/method=aprillab,shots=4/checkpoints/trained.ckpt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "evaluate.py", "method=aprillab", f"ckpt_path={path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: ckpt_path={path}: Hydra needs values")
    assert f"write \"ckpt_path='{path}'\"" in lines[0]


def test_mode_is_an_evaluate_option():
    assert "python evaluate.py mode=predict" in command_line_error(["mode=predict"], "train")
    assert command_line_error(["mode=predict"], "evaluate") is None
    # Through the entry point: one line, status 1, before Hydra composes anything.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "train.py", "mode=predict"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: mode=predict is an option of evaluate.py, not train.py: python evaluate.py mode=predict ... "
        "(train.py always trains, then tests)"
    ]


def test_default_workers_follow_the_available_cores():
    from hydra import compose, initialize_config_dir

    cores = len(os.sched_getaffinity(0))
    assert available_workers() == min(cores, 8) and available_workers(1) == 1
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=synthetic"])
    assert cfg.datamodule.num_workers == min(cores, 8)


def _warning_survives(message: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_launcher_schema_warning()
        warnings.warn(message, UserWarning, stacklevel=1)
    return bool(caught)


def test_only_the_launcher_schema_warning_is_silenced():
    # pytest restores the warning filters after collecting, dropping what imports installed, so the
    # filter is installed here; that importing the module installs it is checked in a fresh process.
    launcher = (
        "\n'hydra/launcher/joblib' is validated against ConfigStore schema with the same name.\n"
        "This behavior is deprecated in Hydra 1.1 and will be removed in Hydra 1.2."
    )
    assert not _warning_survives(launcher)
    assert _warning_survives("\n'db/mysql' is validated against ConfigStore schema with the same name.")
    assert _warning_survives("some other UserWarning")
    check = (
        "import warnings, anomaly_vlm.resolvers as r; "
        "print([f[0] for f in warnings.filters "
        "if f[1] is not None and f[1].pattern == r.LAUNCHER_SCHEMA_WARNING])"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "['ignore']", result.stderr


def test_a_detector_outside_mode_predict_is_refused(tmp_path):
    detector = str(tmp_path / "detectors" / "bottle")
    message = command_line_error([f"detector={detector}", "experiment=demo"], "evaluate")
    assert message == (
        f"detector={detector} is used only by mode=predict (it scores images with a saved detector; "
        "mode=test measures a method on a labelled dataset and would ignore it): "
        f"python evaluate.py mode=predict detector={detector} data.path=<image or folder>"
    )
    assert "mode=test" in command_line_error(["mode=test", f"detector={detector}"], "evaluate")
    assert command_line_error(["mode=predict", f"detector={detector}", "data.path=x"], "evaluate") is None
    assert command_line_error(["detector=null", "experiment=demo"], "evaluate") is None
    assert command_line_error([f"detector={detector}"], "train").startswith(
        "detector= is an option of evaluate.py mode=predict, not train.py: python evaluate.py mode=predict"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "evaluate.py", f"detector={detector}", "experiment=demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
