"""Jobs that would train identical parameters train once: the reference draws of a few-shot sweep."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from anomaly_vlm.resolvers import NEUTRAL_KEYS

SWEEP = (
    "-m",
    "experiment=aprillab_synthetic",
    "logger=none",
    "shots=1",
    "reference_seed=0,2",  # draws 003.png and 002.png of disc (seeds 0 and 1 both draw 003.png)
    "trainer.max_epochs=1",
    # 64 px and two prompts: what is shared and reused does not depend on them
    "backbone.image_size=64",
    "prompts=two_prompt",
    "data.categories=[disc]",
    "train_data.categories=[grass]",
    # Five training and five test images (one per defect type): the draws above are of the default eight
    # train images, and two draws still score differently on every pixel.
    "+train_data.num_test_good=2",
    "+train_data.num_test_per_defect=1",
    "+data.num_test_good=2",
    "+data.num_test_per_defect=1",
)


def _own_cache(tmp_path, cache_dir) -> tuple[str, ...]:
    """A cache folder of this test alone: the shared trained parameters live in ``<cache>/trained``, and
    a training another test already published there would be loaded instead of trained. The synthetic
    images are the session's (generated once)."""
    synthetic = cache_dir / "synthetic"
    return f"paths.cache_dir={tmp_path / 'cache'}", f"data.root={synthetic}", f"train_data.root={synthetic}"


def test_reference_draws_share_one_training(run_entry_point, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    result = run_entry_point("train.py", *SWEEP, f"hydra.sweep.dir={sweep}", *_own_cache(tmp_path, cache_dir))
    payloads = [json.loads(path.read_text()) for path in sorted(sweep.rglob("results.json"))]
    assert len(payloads) == 2
    first, second = sorted(payloads, key=lambda payload: payload["config"]["reference_seed"])
    assert first["trained_checkpoint"].endswith("checkpoints/trained.ckpt")
    shared = second["trained_checkpoint"]
    assert "/trained/" in shared and shared.endswith(".ckpt")  # loaded, not retrained
    assert "identical training already done by another job" in result.stdout + result.stderr
    trained = torch.load(first["trained_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    reused = torch.load(shared, map_location="cpu", weights_only=True)["state_dict"]
    assert trained.keys() == reused.keys()
    assert all(torch.equal(trained[key], reused[key]) for key in trained)
    # Different draws, so different few-shot results from the same projections.
    assert first["metrics"]["mean"] != second["metrics"]["mean"]


def test_neutral_keys_are_the_hydra_exclude_keys():
    from pathlib import Path

    config = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "hydra" / "default.yaml")
    assert list(config.job.config.override_dirname.exclude_keys) == list(NEUTRAL_KEYS)


@pytest.mark.slow
def test_parallel_joblib_jobs_train_the_shared_parameters_once(run_entry_point, tmp_path, cache_dir):
    """Two jobs launched at once by joblib: one trains, the other waits for its lock and loads."""
    overrides = [item for item in SWEEP if not item.startswith("reference_seed")]
    sweep = tmp_path / "sweep"
    run_entry_point(
        "train.py",
        *overrides,
        "reference_seed=0,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        *_own_cache(tmp_path, cache_dir),
        timeout=900,
    )
    payloads = [json.loads(path.read_text()) for path in sorted(sweep.rglob("results.json"))]
    assert len(payloads) == 2
    checkpoints = sorted(payload["trained_checkpoint"] for payload in payloads)
    trained_here = [path for path in checkpoints if path.endswith("checkpoints/trained.ckpt")]
    assert len(trained_here) == 1, checkpoints  # exactly one job trained
    assert any("/trained/" in path for path in checkpoints)
    assert len(list(sweep.rglob("checkpoints/last.ckpt"))) == 1  # only the training job ran epochs
