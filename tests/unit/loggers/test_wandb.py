"""W&B: an offline run is written and read back; an unreachable server falls back to offline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_vlm.loggers.wandb import WandbRunLogger, finish, log_results

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def fresh_wandb():
    """W&B caches its settings (e.g. WANDB_MODE=disabled of the test session) process-wide; reset them."""
    wandb.teardown()
    yield
    wandb.teardown()


def _read_when_complete(read_offline_run, folder: Path, timeout: float = 20.0) -> dict:
    """W&B's service may still be writing the transaction log for a moment after finish() (a half-written
    record does not parse yet): read again every 50 ms, up to the deadline."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            run = read_offline_run(folder)
        except (DecodeError, FileNotFoundError):
            # a record (or the file itself) is still being written: read again, up to the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        if (run["name"] and "test/image_auroc" in run["summary"]) or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def _metrics(value: float) -> dict:
    return {
        "image_auroc": value,
        "image_ap": value,
        "image_f1max": None,
        "pixel_auroc": value,
        "pixel_ap": value,
        "pixel_f1max": value,
        "pixel_aupro": value,
    }


def test_offline_run_is_read_back(tmp_path: Path, monkeypatch, read_offline_run) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # Lightning passes ``anonymous=None`` to ``wandb.init``, which W&B answers on every run with "The
    # anonymous setting has no effect"; the logger leaves the setting out (checked on this run: one W&B
    # run fewer than a test of its own).
    warned: list[str] = []
    monkeypatch.setattr(wandb, "termwarn", lambda message, *args, **kwargs: warned.append(str(message)))
    overlay = tmp_path / "overlays" / "brick" / "hole_000.png"
    overlay.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 24, 3), np.uint8)).save(overlay)
    logger = WandbRunLogger(
        project="p",
        save_dir=str(tmp_path),
        name="method=clip,seed=3",
        group="sweep-a",
        tags=["method:clip", "seed:3"],
        heatmaps_per_category=1,
    )
    logger.log_hyperparams({"method": "clip", "shots": 0, "seed": 3, "dataset": "synthetic"})
    logger.log_metrics({"train/loss": 0.5}, step=0)
    logger.log_metrics({"train/loss": 0.25}, step=1)
    per_category = {"brick": _metrics(0.75), "nut": _metrics(0.25)}
    log_results(logger, per_category, _metrics(0.5), {"ms_per_image": 2.5, "flops_per_image": 10}, tmp_path)
    finish(logger)
    assert not [message for message in warned if "anonymous" in message]

    run = _read_when_complete(read_offline_run, tmp_path / "wandb")
    assert run["name"] == "method=clip,seed=3" and run["group"] == "sweep-a"
    assert run["tags"] == ["method:clip", "seed:3"]
    assert run["config"]["method"] == "clip" and run["config"]["seed"] == 3
    assert [h["train/loss"] for h in run["history"] if "train/loss" in h] == [0.5, 0.25]
    assert run["summary"]["test/image_auroc"] == 0.5
    assert run["summary"]["efficiency/ms_per_image"] == 2.5
    assert run["summary"]["test/per_category/_type"] == "table-file"
    assert run["summary"]["test/per_category/nrows"] == 3
    assert any(key.startswith("heatmaps/brick/") for key in run["summary"])
    table_files = list((tmp_path / "wandb").rglob("per_category*.table.json"))
    assert len(table_files) == 1
    import json

    table = json.loads(table_files[0].read_text())
    assert table["columns"][0] == "category" and [row[0] for row in table["data"]] == ["brick", "nut", "mean"]


def test_unreachable_server_continues_offline(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbRunLogger(project="p", save_dir=str(tmp_path), offline=False, name="n", init_timeout=5)
    with caplog.at_level("WARNING"):
        logger.log_metrics({"x": 1.0})
    finish(logger)
    assert "continuing offline" in caplog.text
    assert logger._offline and os.environ.get("WANDB_MODE") in ("offline", "dryrun")
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
