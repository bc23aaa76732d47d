"""Check every job of a multirun before the first one starts, and report all bad jobs at once.

Without this, ``python train.py -m method=clip,winclip,aprillab data=folder ...`` without ``train_data``
runs the training-free jobs for hours and then stops at the first APRIL-GAN job. Registered as a Hydra
callback (``conf/hydra/default.yaml``): on multirun start it expands the command-line sweep, composes
each job's config and runs :func:`~anomaly_vlm.tasks.config_checks.check_config`, the checks that need no
data and no model, as every single job does. Every problem of every job is printed as one ``error:`` line,
then it exits 1.
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

from anomaly_vlm.tasks.config_checks import check_config
from anomaly_vlm.tasks.construction import NAMED_GROUPS
from anomaly_vlm.tasks.errors import USER_ERRORS
from anomaly_vlm.tasks.training_data import use_protocol_training_data


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


def check_job(cfg: DictConfig, fit: bool) -> list[Exception]:
    """The problems of one composed job that need neither data nor a model (:func:`check_config`)."""
    choices = cfg.hydra.runtime.choices
    names = {group: choices.get(group) for group in NAMED_GROUPS}
    use_protocol_training_data(cfg, names, fit)
    return check_config(cfg, names, fit)


def bad_jobs(config_name: str, jobs: list[list[str]], fit: bool) -> list[str]:
    """``"<overrides>: <problem>"`` for every job that cannot run."""
    loader = GlobalHydra.instance().config_loader()
    problems = []
    for job in jobs:
        try:
            cfg = loader.load_configuration(config_name=config_name, overrides=job, run_mode=RunMode.RUN)
            found = check_job(cfg, fit)
        except (*USER_ERRORS, HydraException, ValueError) as error:
            found = [error]
        problems.extend(f"{' '.join(job)}: {problem}" for problem in found)
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
