"""The run folder: never replace a finished result, leave no stale artefacts, skip repeated jobs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig

from anomaly_vlm.runtime import in_multirun
from anomaly_vlm.tasks import resume

log = logging.getLogger(__name__)

#: Folders of per-image artefacts a job writes into its run folder (checkpoints are kept for resumption).
OVERLAY_DIR = "overlays"


ARTEFACT_DIRS = (OVERLAY_DIR, "predictions", "heatmaps", "masks", "detectors")
#: Written by ``save_predictions`` (one row per image): its presence says a run saved its predictions.
PREDICTIONS_FILE = "predictions/scores.csv"


def clear_stale_artefacts(output_dir: Path) -> None:
    """Remove the per-image artefacts of an earlier run, so ``overwrite=true`` leaves no stale files."""
    for name in ARTEFACT_DIRS:
        shutil.rmtree(output_dir / name, ignore_errors=True)


def guard_finished_run(output_dir: Path, overwrite: bool, needs_predictions: bool = False) -> dict | None:
    """Never replace a finished result unless asked to; in a multirun, return it so the job is skipped.

    With ``overwrite`` the earlier run's overlays, predictions and heatmaps are removed as well: a new
    run may write fewer of them, and stale ones would be mistaken for its own. A finished multirun job
    asked for ``save_predictions`` that it ran without (``needs_predictions``) runs again: skipping it
    would leave the sweep without the maps an analysis asked it to keep.
    """
    finished = resume.finished_result(output_dir, overwrite)
    if finished is not None and needs_predictions and not (output_dir / PREDICTIONS_FILE).is_file():
        log.info("finished job %s saved no predictions; running it again to save them", output_dir)
        finished, overwrite = None, True
    if finished is None and overwrite:
        clear_stale_artefacts(output_dir)
    return finished


def is_repeated_zero_shot_draw(cfg: DictConfig) -> bool:
    """Whether this multirun job would repeat another one: a zero-shot job uses no references, so of
    the reference draws a method sweeps by default (``reference_seed`` = 0 .. ``reference_draws`` - 1)
    only the first one runs."""
    if cfg.shots != 0 or not in_multirun():
        return False
    return 0 < cfg.reference_seed < cfg.reference_draws
