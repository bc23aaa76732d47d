"""Check every job of a multirun before the first one starts, and report all bad jobs at once.

Without this, ``python train.py -m method=clip,winclip,aprillab data=folder ...`` without ``train_data``
runs the training-free jobs for hours and then stops at the first APRIL-GAN job. Registered as a Hydra
callback (``conf/hydra/default.yaml``): on multirun start it expands the command-line sweep, composes
each job's config and runs the checks that need no data and no model (config composes, shots, training
data, block indices). Any failure prints one ``error:`` line per bad job and exits 1.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from anomaly_vlm.tasks.building import (
    build,
    check_backbone_depths,
    check_labelled_data,
    check_shots_supported,
    check_training_data,
    split_synthesis,
    trains_on_auxiliary_data,
)
from anomaly_vlm.tasks.errors import USER_ERRORS


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of a command-line sweep (the cartesian product of its lists)."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def check_job(cfg: DictConfig, fit: bool) -> None:
    """The checks of one composed job that need neither data nor a model."""
    choices = cfg.hydra.runtime.choices
    if cfg.get("mode") != "predict":
        check_labelled_data(cfg, choices.get("data"))
    check_shots_supported(cfg.method, cfg.shots, choices.get("method"))
    if fit:
        check_training_data(cfg, fit, choices.get("method"), choices.get("data"))
        if cfg.train_data and trains_on_auxiliary_data(cfg):
            _, synthesis = split_synthesis(cfg.train_data)
            if synthesis is not None:
                build(synthesis)  # bad train_data.synthesis options fail the sweep before any job
    check_backbone_depths(cfg, choices.get("backbone"))


def bad_jobs(config_name: str, jobs: list[list[str]], fit: bool) -> list[str]:
    """``"<overrides>: <problem>"`` for every job that cannot run."""
    loader = GlobalHydra.instance().config_loader()
    problems = []
    for job in jobs:
        try:
            cfg = loader.load_configuration(config_name=config_name, overrides=job, run_mode=RunMode.RUN)
            check_job(cfg, fit)
        except (*USER_ERRORS, HydraException, ValueError) as error:
            problems.append(f"{' '.join(job)}: {error}")
    return problems


class SweepPreflight(Callback):
    """Hydra callback: every job of a multirun is checked before the first starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = sweep_jobs(list(config.hydra.overrides.task))
        fit = config.get("task_name") == "train"
        problems = bad_jobs(str(config.hydra.job.config_name), jobs, fit)
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            print(
                f"error: {len(problems)} of {len(jobs)} jobs of this sweep cannot run; none was started",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)
