"""Lightning DDP inside a Hydra multirun.

Lightning starts ranks 1..N-1 by re-running the command line with ``hydra.run.dir`` set to the run
folder. In a multirun that command still holds ``-m`` and the swept lists, so every rank would start
the whole sweep again. :func:`job_command` makes the ranks re-run only the current job: its
own overrides as a single run in the job's folder (installed by the job through
:func:`anomaly_vlm.compat.lightning_ddp_relaunch`). SLURM jobs with ``tasks_per_node = devices`` need
none of this (Lightning reads the ranks from SLURM's environment).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path


def job_command(local_rank: int) -> tuple[Sequence[str], str]:
    """The command that runs this multirun job (not the sweep) as rank ``local_rank``."""
    import __main__

    hydra = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra.overrides.task)
    command += [
        f'hydra.run.dir="{hydra.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


#: Variables Lightning's process launcher sets in the launching process.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def launch_environment() -> dict[str, str | None]:
    """The launch variables as they are before a job starts (restored by :func:`teardown`)."""
    return {name: os.environ.get(name) for name in LAUNCH_VARIABLES}


def teardown(before: dict[str, str | None] | None = None) -> None:
    """End this job's process group and restore the launch variables it started with.

    Lightning leaves ``LOCAL_RANK`` and friends set in the launching process, which would make the next
    job of a multirun believe its ranks were started externally and wait for ranks that never come.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in (before or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
