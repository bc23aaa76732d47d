"""Jobs that would train identical parameters train once: the reference draws of a few-shot sweep."""

from __future__ import annotations

import json

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
    "data.categories=[disc]",
    "train_data.categories=[grass]",
)


def test_reference_draws_share_one_training(run_entry_point, tmp_path):
    result = run_entry_point("train.py", *SWEEP, f"hydra.sweep.dir={tmp_path}")
    payloads = [json.loads(path.read_text()) for path in sorted(tmp_path.rglob("results.json"))]
    assert len(payloads) == 2
    first, second = sorted(payloads, key=lambda payload: payload["config"]["reference_seed"])
    assert first["trained_checkpoint"].endswith("checkpoints/trained.ckpt")
    shared = second["trained_checkpoint"]
    assert "/trained/" in shared and shared.endswith(".ckpt")  # loaded, not retrained
    assert "identical training already done by another job" in result.stdout + result.stderr
    trained = torch.load(first["trained_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    reused = torch.load(shared, map_location="cpu", weights_only=False)["state_dict"]
    assert trained.keys() == reused.keys()
    assert all(torch.equal(trained[key], reused[key]) for key in trained)
    # Different draws, so different few-shot results from the same projections.
    assert first["metrics"]["mean"] != second["metrics"]["mean"]


def test_neutral_keys_are_the_hydra_exclude_keys():
    from pathlib import Path

    config = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "hydra" / "default.yaml")
    assert list(config.job.config.override_dirname.exclude_keys) == list(NEUTRAL_KEYS)
