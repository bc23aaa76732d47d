"""`python train.py method=winclip ... shots=2` end to end, offline, on the tiny CLIP and synthetic data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from warm_python import run_python

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_winclip_few_shot_run_writes_results(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "method=winclip",
        "data=synthetic",
        "backbone=tiny",
        # 64 px (4x4 patches: both window scales fit): the assertions read what the run writes, not sizes
        "backbone.image_size=64",
        "shots=2",
        "logger=none",
        "data.categories=[brick,disc]",
        # Three train images (two references, one held out for the thresholds) and one test image per
        # defect type: the run's steps all happen, on a third of the images.
        "+data.num_train=3",
        "+data.num_test_good=2",
        "+data.num_test_per_defect=1",
        # The session's synthetic images (generated once); the text cache below stays this test's own.
        f"data.root={cache_dir / 'synthetic'}",
        "datamodule.num_workers=0",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = run_python(command, cwd=REPO_ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    assert (results["method"], results["prompts"], results["backbone"], results["shots"]) == (
        "winclip",
        "winclip_cpe",
        "tiny",
        2,
    )
    assert set(results["metrics"]["per_category"]) == {"brick", "disc"}
    assert 0.0 <= results["metrics"]["mean"]["image_auroc"] <= 1.0
    assert (run_dir / "references.json").is_file()
    # The CPE text embeddings landed in the disk cache for the next run.
    assert len(list((tmp_path / "cache" / "text").glob("*.pt"))) == 2
