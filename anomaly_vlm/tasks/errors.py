"""Every mistake in the input that the entry points report as one ``error: <message>`` line.

Programming errors keep their traceback; a user who mistyped a path needs the path, not a stack.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from omegaconf import DictConfig

from anomaly_vlm.backbones.weights import WeightsNotFoundError
from anomaly_vlm.data import DataError
from anomaly_vlm.data.sampling import ShotsError
from anomaly_vlm.decisions.thresholds import ThresholdError
from anomaly_vlm.deploy.detector import DetectorError
from anomaly_vlm.untrusted import UntrustedFileError


class MissingValueError(ValueError):
    """A config value marked ``???`` was not given."""


class CheckpointError(ValueError):
    """``ckpt_path`` is missing, unreadable, or made for another method, backbone or prompt set."""


class ConfigError(ValueError):
    """A config value that cannot work with the rest of the config (e.g. a block the backbone lacks)."""


class FinishedRunError(FileExistsError):
    """The output folder already holds a finished results.json."""


class FinishedPredictionError(FinishedRunError):
    """The output folder already holds the scores of a finished prediction run."""


class SweepError(ValueError):
    """Jobs of a multirun that cannot run, all of them, found before the first job starts."""


#: Mistakes in the input (data, config values, files): the entry points print their message alone.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    ShotsError,
    FinishedRunError,
    CheckpointError,
    WeightsNotFoundError,
    MissingValueError,
    ConfigError,
    SweepError,
    ThresholdError,
    DetectorError,
    UntrustedFileError,
)


def report_user_errors(task: Any) -> Any:
    """Print one ``error: <message>`` line for :data:`USER_ERRORS` and exit 1 (no traceback)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper
