"""Test helper: read back what an offline W&B run wrote, without syncing it.

W&B offers no public reader of its offline transaction log (``run-<id>.wandb``), so the tests parse it:
LevelDB-style 32 KiB blocks of records, each a ``wandb_internal_pb2.Record``. It lives with the tests
because it depends on W&B's internal file format, which the package itself must not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _log_records(path: Path):
    """Raw records of a W&B transaction log (``run-<id>.wandb``): LevelDB-style 32 KiB blocks."""
    import struct

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        position += 7
        chunk = data[position : position + length]
        position += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """What an offline run wrote, read back without syncing: name, group, tags, config, history, summary.

    Args:
        run_dir: ``<run>/wandb/offline-run-...`` (or the ``wandb`` folder holding exactly one run).
    """
    import json

    from wandb.proto import wandb_internal_pb2

    run_dir = Path(run_dir)
    files = sorted(run_dir.rglob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb below {run_dir}, found {len(files)}")
    out: dict[str, Any] = {
        "name": None,
        "group": None,
        "tags": [],
        "config": {},
        "history": [],
        "summary": {},
    }
    for raw in _log_records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # A run may be recorded more than once (e.g. updates at finish); keep the fields that are set.
            fields = {
                "name": record.run.display_name,
                "group": record.run.run_group,
                "tags": list(record.run.tags),
            }
            out.update({key: value for key, value in fields.items() if value})
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "summary":
            out["summary"].update(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.summary.update
                }
            )
    return out
