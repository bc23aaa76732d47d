"""The Evaluator's states are gathered by torchmetrics under DDP: two ranks with half the images each
compute what one process computes with all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from anomaly_vlm.metrics import Evaluator


    def category(seed, n=20, size=16):
        rng = np.random.default_rng(seed)
        labels = (np.arange(n) % 3 != 0).astype(np.int64)
        masks = np.zeros((n, size, size), dtype=bool)
        for b in np.flatnonzero(labels):
            y, x = rng.integers(0, size - 5, 2)
            masks[b, y : y + 4, x : x + 3] = True
        maps = (rng.normal(size=masks.shape) + 1.5 * masks).astype(np.float32)
        scores = maps.reshape(n, -1).max(axis=1) + rng.normal(scale=0.5, size=n)
        return scores, labels, maps, masks


    def feed(evaluator, part):
        for name, seed in (("a", 1), ("b", 2)):
            scores, labels, maps, masks = category(seed)
            rows = slice(None) if part is None else slice(part * 10, part * 10 + 10)
            evaluator.update(name, scores[rows], labels[rows], maps[rows], masks[rows])


    def worker(rank, out):
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
        synced = Evaluator()
        feed(synced, rank)
        results = {name: synced.compute_category(name) for name in ("a", "b")}
        alone = Evaluator(sync_on_compute=False)
        feed(alone, rank)
        local = alone.compute_category("a")
        if rank == 0:
            whole = Evaluator(sync_on_compute=False)
            feed(whole, None)
            reference = {name: whole.compute_category(name) for name in ("a", "b")}
            with open(f"{out}/results.json", "w") as handle:
                json.dump({"ddp": results, "one": reference, "local": local}, handle)
        dist.destroy_process_group()


    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
    """
)


@pytest.mark.slow
def test_ddp_ranks_evaluator_states_are_gathered_by_torchmetrics(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "results.json").read_text())
    for name, metrics in found["one"].items():
        assert metrics["pixel_aupro"] is not None
        assert found["ddp"][name] == pytest.approx(metrics, abs=1e-12), name
    # Without the sync each rank sees half the images: the gather above is what made them agree.
    assert found["local"] != pytest.approx(found["one"]["a"], abs=1e-12)
