"""Config mistakes a first command makes reach the user as one ``error:`` line, in single runs and sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import run_python

ROOT = Path(__file__).resolve().parents[2]


def _entry(script: str, *arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return run_python([sys.executable, script, *arguments], cwd=ROOT, env=env, timeout=120)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_aprillab_blocks_the_backbone_lacks_stop_a_run_and_a_sweep(tmp_path):
    common = ["experiment=aprillab_synthetic", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"]
    single = _entry("train.py", *common, "method.stages=[2,20]", f"hydra.run.dir={tmp_path / 'run'}")
    assert _error_lines(single) == [
        "error: method.stages=[2, 20]: blocks [20] outside 1..8 of backbone=tiny ('anomaly-vlm-tiny'); "
        "e.g. method.stages=[8]"
    ]
    sweep = _entry(
        "train.py",
        "-m",
        *common,
        "method.few_shot_stages=[20]",
        "shots=1",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    )
    lines = _error_lines(sweep)
    assert len(lines) == 2 and "method.few_shot_stages=[20]: blocks [20] outside 1..8" in lines[0]
    assert lines[1] == "error: 1 of 1 jobs of this sweep cannot run; none was started"


def test_the_headline_command_trains_on_the_published_partner(tmp_path):
    """``python train.py method=aprillab shots=4 -m`` as typed: no question about train_data; without
    the datasets here it stops at the normal one-line data error."""
    result = _entry(
        "train.py",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'm'}",
        "logger=none",
        "method=aprillab",
        "shots=4",
        "-m",
    )
    output = result.stdout + result.stderr
    assert "train_data=visa: method 'aprillab' trains on auxiliary data and none was given" in output
    assert "protocol for data=mvtec trains on the VisA test split" in output
    assert _error_lines(result) == [
        f"error: dataset root does not exist: {tmp_path / 'data' / 'mvtec'} (set data.root or DATA_ROOT)"
    ]


# Slow: the check is tests/unit/tasks/test_unlabelled_data.py's train composition through run(); a DataError
# reaching train.py's user as one error line is test_the_headline_command_trains_on_the_published_partner's.
@pytest.mark.slow
def test_unlabelled_images_in_train_py_name_mode_predict_first(tmp_path):
    result = _entry(
        "train.py", "experiment=demo", "data=images", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert _error_lines(result) == [
        "error: data=images holds unlabelled images, which have no metrics to test: score them with "
        "`python evaluate.py mode=predict data.path=...`"
    ]


def test_an_impossible_alignment_is_one_error_line(tmp_path):
    result = _entry(
        "train.py",
        "experiment=demo",
        "method=alignment",
        "train_data=synthetic",
        "method.alignment=surgery+linear",
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert _error_lines(result) == [
        "error: method.alignment=surgery+linear: 'surgery' and 'linear' cannot be combined"
    ]


def test_only_the_alignment_strategies_that_train_ask_for_train_data(tmp_path, cache_dir):
    """Training-free strategies (none, windows, surgery) run without auxiliary data; a strategy that trains
    stops with one line naming train_data."""
    common = ["experiment=demo", "method=alignment", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"]
    trained = _entry("train.py", *common, "method.alignment=linear", f"hydra.run.dir={tmp_path / 'linear'}")
    [line] = _error_lines(trained)
    assert (
        line.startswith("error: method 'alignment' trains on an auxiliary dataset") and "train_data=<" in line
    )
    free = _entry(
        "train.py",
        *common,
        "method.alignment=surgery",
        "data.categories=[disc]",
        "backbone.image_size=64",  # the run only has to finish
        # five test images of the session's generated set: the run only has to finish
        f"data.root={cache_dir / 'synthetic'}",
        "+data.num_train=2",
        "+data.num_test_good=2",
        "+data.num_test_per_defect=1",
        f"hydra.run.dir={tmp_path / 'surgery'}",
    )
    assert free.returncode == 0, free.stderr[-3000:]
    assert (tmp_path / "surgery" / "results.json").is_file()
