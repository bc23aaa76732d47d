"""Every patch of a dependency's private API, each fenced: applied for a bounded time, then undone.

Each patch names the versions it was written against; ``tests/unit/test_compat.py`` pins them, so an
upgrade that moves the private name fails a test instead of silently doing nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

#: Lightning releases whose DDP launcher builds the ranks' command with ``_hydra_subprocess_cmd``.
LIGHTNING_DDP_RELAUNCH_VERSIONS = ("2.6.",)


@contextlib.contextmanager
def lightning_ddp_relaunch(command: Callable[[int], tuple[Sequence[str], str]]) -> Iterator[None]:
    """Make Lightning's DDP launcher start ranks 1..N-1 with ``command(local_rank)`` meanwhile.

    Lightning has no public hook for the command of the ranks it starts under Hydra; it re-runs the
    original command line, which in a multirun restarts the whole sweep on every rank. The patch is
    undone on exit, so nothing outside the job sees it.
    """
    from lightning.pytorch.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original


#: Lightning releases whose ``WandbLogger`` keeps its run, mode and init arguments in ``_experiment``,
#: ``_offline`` and ``_wandb_init``.
LIGHTNING_WANDB_LOGGER_VERSIONS = ("2.6.",)


def wandb_run_started(logger: object) -> bool:
    """Whether a Lightning ``WandbLogger`` has started its W&B run (without starting one)."""
    return getattr(logger, "_experiment", None) is not None


def wandb_logger_drop_unset_anonymous(logger: object) -> None:
    """Leave ``anonymous`` out of the ``wandb.init`` arguments of a Lightning ``WandbLogger`` unless set.

    ``WandbLogger`` always passes ``anonymous=None``; W&B deprecated the setting and warns "The anonymous
    setting has no effect" whenever it is given at all, so every run would print it.
    """
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)


def wandb_logger_go_offline(logger: object) -> None:
    """Make a Lightning ``WandbLogger`` whose server could not be reached start its run offline.

    ``WandbLogger`` fixes its mode when constructed and offers no public switch; the next access to
    ``experiment`` then initialises an offline run with the same name, group and tags.
    """
    logger._experiment = None
    logger._offline = True
    logger._wandb_init["mode"] = "offline"
