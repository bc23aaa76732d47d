"""The dependency patches of ``anomaly_vlm.compat``: pinned to the versions they were written for,
applied only inside their context, restored after."""

from __future__ import annotations

import lightning
import pytest
from lightning.pytorch.strategies.launchers import subprocess_script

from anomaly_vlm import compat


def test_lightning_version_is_one_the_ddp_relaunch_patch_was_written_for():
    # A new Lightning may rename the private hook; re-check compat.lightning_ddp_relaunch, then add it.
    assert lightning.__version__.startswith(compat.LIGHTNING_DDP_RELAUNCH_VERSIONS)
    assert callable(subprocess_script._hydra_subprocess_cmd)


def test_ddp_relaunch_patch_is_undone_after_use_and_on_error():
    original = subprocess_script._hydra_subprocess_cmd

    def command(local_rank: int):
        return ["rank", str(local_rank)], "."

    with compat.lightning_ddp_relaunch(command):
        assert subprocess_script._hydra_subprocess_cmd is command
    assert subprocess_script._hydra_subprocess_cmd is original
    with pytest.raises(RuntimeError), compat.lightning_ddp_relaunch(command):
        raise RuntimeError("a job failed")
    assert subprocess_script._hydra_subprocess_cmd is original


def test_wandb_logger_internals_the_offline_fallback_uses_exist(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    assert lightning.__version__.startswith(compat.LIGHTNING_WANDB_LOGGER_VERSIONS)
    logger = WandbLogger(save_dir=str(tmp_path), offline=False)
    assert not compat.wandb_run_started(logger)
    compat.wandb_logger_go_offline(logger)
    assert logger._offline is True and logger._wandb_init["mode"] == "offline"


def test_wandb_logger_still_passes_anonymous_none_which_the_logger_drops(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert "anonymous" in logger._wandb_init and logger._wandb_init["anonymous"] is None
    compat.wandb_logger_drop_unset_anonymous(logger)
    assert "anonymous" not in logger._wandb_init
