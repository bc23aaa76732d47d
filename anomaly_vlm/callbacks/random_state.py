"""The random generators of a training process, saved with each epoch's checkpoint and restored from it.

A resumed training must draw the same random numbers as an uninterrupted one (dropout, random
initialisations made during training, anything a method draws from the global generators). The states
of torch (CPU and every CUDA device), numpy and Python's ``random`` are kept per process (DDP rank).

Checkpoints are loaded with ``weights_only=True``, so the states are stored as plain data: tensors,
lists, tuples and numbers (numpy's key array becomes a list of ints).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def capture_random_state() -> dict[str, Any]:
    """This process's generator states as plain data (see :func:`restore_random_state`)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": str(numpy_state["bit_generator"]),
            "key": [int(word) for word in numpy_state["state"]["key"]],
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Set this process's generators to a state of :func:`capture_random_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning(
                "the checkpoint holds the random state of %d CUDA devices, this process sees %d: "
                "CUDA draws after resuming differ from an uninterrupted run",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))


def _every_rank(state: dict[str, Any]) -> list[dict[str, Any]]:
    """``state`` of every process of the job, in rank order (a list of one without DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    # CUDA tensors cannot travel through an object gather on CPU (gloo): states are CPU tensors anyway.
    dist.all_gather_object(gathered, state)
    return gathered


class RandomStateCheckpoint(L.Callback):
    """Keeps the random generator states of every process in the checkpoints the trainer writes.

    The first training step of each epoch after the first starts from the states stored with the
    previous epoch's checkpoint, whether the run was resumed from that checkpoint or never stopped.
    Restoring there, rather than when the checkpoint is loaded, makes the two runs equal even though
    they run different code in between: hooks that run once per ``fit`` (``on_fit_start``,
    ``on_train_start``), and the data loader, which draws its workers' base seed from the global
    generator when an epoch's iterator is created (at the end of the restore when resuming, after
    ``on_train_epoch_start`` otherwise). What that code drew is not what the training steps draw from.
    The training data must therefore not come from the global generators (the datamodule's does not:
    its draws are seeded by epoch and item).

    ``state_dict`` is called on every rank while a checkpoint is written (Lightning collects callback
    states on all ranks before rank 0 writes), so the per-rank states are gathered there.
    """

    def __init__(self) -> None:
        self._epoch_start_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = capture_random_state()
        self._epoch_start_state = state
        return {"random_state": _every_rank(state)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("random_state")
        if not states:
            log.warning(
                "the checkpoint holds no random state: training resumes with freshly seeded generators"
            )
            return
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if len(states) != world:
            log.warning(
                "the checkpoint was written by %d processes, this job runs %d: random draws after resuming "
                "differ from an uninterrupted run",
                len(states),
                world,
            )
            return
        self._epoch_start_state = states[rank]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._epoch_start_state is not None:
            restore_random_state(self._epoch_start_state)
            self._epoch_start_state = None
