"""Mistakes reach the user through the entry points as one readable message (subprocesses, ~5 s each)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from hostile_files import bomb_png
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from PIL import Image
from warm_python import run_python

ROOT = Path(__file__).resolve().parents[2]


def _entry(script: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return run_python([sys.executable, script, *overrides], cwd=ROOT, env=env, timeout=120)


def test_unknown_method_lists_the_options():
    result = _entry("train.py", "method=nope")
    assert result.returncode != 0
    assert "Could not find 'method/nope'" in result.stderr
    assert "Available options in 'method'" in result.stderr and "clip" in result.stderr


def test_unknown_backbone_and_prompt_set_list_the_options():
    # The same composition code path as the entry points, without a process start per case.
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for group, valid in (("backbone", "vit_l14_336"), ("prompts", "two_prompt"), ("data", "visa")):
            try:
                compose("train", overrides=[f"{group}=nope"])
            except MissingConfigException as error:
                assert f"Could not find '{group}/nope'" in str(error)
                assert valid in str(error.options)
            else:
                raise AssertionError(f"{group}=nope composed")


def test_finished_run_is_refused_with_one_clean_line(tmp_path):
    finished = json.dumps({"status": "complete", "metrics": {}})
    (tmp_path / "results.json").write_text(finished)
    overrides = ["experiment=demo", "logger=none", f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path}"]
    result = _entry("evaluate.py", *overrides)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"error: {tmp_path / 'results.json'} already holds a finished result; refusing to overwrite it. "
        "Choose another output folder or pass overwrite=true."
    )
    assert "Traceback" not in result.stderr and "\\n" not in result.stderr
    assert (tmp_path / "results.json").read_text() == finished


def test_a_decompression_bomb_in_a_dataset_is_one_error_line(tmp_path):
    """A 67-byte PNG that claims 100000x100000 pixels stops the job before weights load and decoding."""
    root = tmp_path / "data"
    for name in ("train/good/0.png", "test/good/0.png", "test/dent/0.png"):
        (root / "widget" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (90, 90, 90)).save(root / "widget" / name)
    bomb = bomb_png(root / "widget" / "test" / "dent" / "1.png")
    overrides = ["backbone=tiny", "data=folder", f"data.root={root}", "logger=none"]
    result = _entry(
        "evaluate.py", *overrides, f"hydra.run.dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path}"
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(
        f"error: image {bomb} is 100000x100000 = 10,000,000,000 pixels, over the limit"
    )
    assert "(data.max_image_pixels)" in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in result.stderr
