"""Two parallel jobs with the same training fingerprint: one trains, the other waits and loads."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from anomaly_vlm.tasks import resume
from anomaly_vlm.tasks.runner import fit_or_resume

_CONTEXT = multiprocessing.get_context("fork")


class _SlowTrainer:
    world_size = 1
    is_global_zero = True

    def __init__(self, events: Path) -> None:
        self.events = events

    def _event(self, text: str) -> None:
        with open(self.events, "a") as handle:
            handle.write(f"{os.getpid()} {text}\n")

    def fit(self, method, datamodule=None, ckpt_path=None) -> None:
        self._event("fit-start")
        time.sleep(1.0)
        self._event("fit-end")

    def save_checkpoint(self, path, weights_only=False) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("trained")


class _Method:
    def __init__(self, events: Path) -> None:
        self.events = events

    def load_trainable_checkpoint(self, path: str) -> None:
        with open(self.events, "a") as handle:
            handle.write(f"{os.getpid()} load {Path(path).read_text()}\n")


def test_parallel_jobs_train_once(tmp_path):
    events = tmp_path / "events.log"
    shared = tmp_path / "cache" / "trained" / "abc.ckpt"
    barrier = _CONTEXT.Barrier(2)

    def job(rank: int) -> None:
        barrier.wait()
        fit_or_resume(_SlowTrainer(events), _Method(events), None, tmp_path / f"job{rank}", shared)

    processes = [_CONTEXT.Process(target=job, args=(rank,)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    lines = [line.split(" ", 1)[1] for line in events.read_text().splitlines()]
    assert lines == ["fit-start", "fit-end", "load trained"]  # the second job waited, then loaded
    assert shared.read_text() == "trained"


def test_no_lock_without_sharing_or_under_ddp(tmp_path):
    with resume.shared_training_lock(None):
        pass
    shared = tmp_path / "x.ckpt"
    with resume.shared_training_lock(shared, world_size=2):
        assert not (tmp_path / ".x.ckpt.lock").exists()
    with resume.shared_training_lock(shared):
        assert (tmp_path / ".x.ckpt.lock").exists()


def test_rounded_cached_features_get_their_own_shared_training(tmp_path):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[3] / "conf"
    fingerprints = {}
    for name, overrides in {
        "exact": [],
        "off": ["feature_cache.enabled=false"],
        "float16": ["feature_cache.dtype=float16"],
    }.items():
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=["experiment=aprillab_synthetic", f"paths.output_dir={tmp_path}", *overrides],
            )
        fingerprints[name] = resume.training_fingerprint(cfg)
    assert fingerprints["exact"] == fingerprints["off"] != fingerprints["float16"]
