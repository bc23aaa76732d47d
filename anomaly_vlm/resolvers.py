"""OmegaConf resolvers for deterministic sweep folders (imported by the entry points before Hydra runs).

A multirun lands in ``<output_root>/<task>/multiruns/<sweep folder>/<job overrides>``:

* the sweep folder is ``sweep_name`` when the user sets it, else the sweep's *non-swept* command-line
  overrides (``method=aprillab,shots=4``), else ``default``. Re-running the same command — or the same
  command with more values in a swept list — lands in the same folders, which is what lets a re-run
  skip finished jobs and resume interrupted ones;
* a job folder is Hydra's ``override_dirname`` (every override of the job, sorted) with path
  separators replaced, so ``data.root=/x/y`` cannot create nested folders.

No timestamps are involved, so jobs that start in the same second never collide.

The sweep folder is computed once, when the multirun starts, from the overrides as typed (where
``shots=0,1,2,4`` is still a list), by :class:`ResolverCallback` (listed under ``hydra.callbacks``), and
exported in the environment; each job re-resolves ``hydra.sweep.dir`` from its own config, whose
overrides hold only its own values, and reads the exported name (the resolver is also cached, and
Hydra copies the launcher's resolver cache into every job config).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

#: Hydra warns, in every process of a joblib sweep, that our launcher files (``conf/hydra/launcher``)
#: share their name with the plugins' ConfigStore schemas; the merge it warns about is exactly what those
#: files rely on, and they validate against the schemas. Only this warning is silenced. This module is
#: imported by the entry points and, through ``ResolverCallback``, by each joblib worker before the
#: worker composes its job config.
LAUNCHER_SCHEMA_WARNING = (
    r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema with the same name"
)


def silence_launcher_schema_warning() -> None:
    """Ignore Hydra's launcher-schema warning (and only it) from now on in this process."""
    warnings.filterwarnings("ignore", message=LAUNCHER_SCHEMA_WARNING, category=UserWarning)


silence_launcher_schema_warning()

#: Overrides that do not change what a job computes and so never name a folder.
NEUTRAL_KEYS = (
    "overwrite",
    "save_predictions",
    "num_overlays",
    "sweep_name",
    "logger",
    "paths.output_root",
    "paths.cache_dir",
    "reuse_trained",
)
DEFAULT_SWEEP_NAME = "default"
_UNSAFE = re.compile(r"[^A-Za-z0-9=,._+\-\[\]@:]")


def sanitize_dirname(name: str, max_length: int = 200) -> str:
    """A folder name from an override string: ``/`` and other unsafe characters become ``_``.

    Long names are shortened with a stable hash suffix (file systems limit a name to 255 bytes).
    """
    import hashlib

    text = str(name).replace("/", "_").replace("\\", "_")
    text = _UNSAFE.sub("_", text).strip(".") or DEFAULT_SWEEP_NAME
    if len(text) > max_length:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        text = f"{text[: max_length - 11]}-{digest}"
    return text


def _override_key(line: str) -> str:
    key = line.split("=", 1)[0]
    return key.lstrip("+~")


def sweep_folder_name(overrides: list[str], sweep_name: str | None = None) -> str:
    """The sweep folder for the command-line ``overrides`` of a multirun.

    Args:
        overrides: the task overrides as typed (``["method=winclip,aprillab", "backbone=tiny"]``).
        sweep_name: explicit name (``sweep_name=...``); wins when set.

    Returns:
        ``sweep_name``, else the sorted non-swept overrides joined by ``,``, else ``default``; sanitised.
    """
    if sweep_name not in (None, "", "null", "None"):
        return sanitize_dirname(str(sweep_name))
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    fixed = sorted(
        override.input_line
        for override in parsed
        if not override.is_sweep_override() and _override_key(override.input_line) not in NEUTRAL_KEYS
    )
    return sanitize_dirname(",".join(fixed)) if fixed else DEFAULT_SWEEP_NAME


#: Set by :class:`ResolverCallback` when a multirun starts (also exported to launcher workers).
SWEEP_FOLDER_ENV = "ANOMALY_VLM_SWEEP_FOLDER"


def _sweep_folder(sweep_name: str | None = None) -> str:
    explicit = sweep_folder_name([], sweep_name)
    if sweep_name not in (None, "", "null", "None"):
        return explicit
    return os.environ.get(SWEEP_FOLDER_ENV) or DEFAULT_SWEEP_NAME


#: Most loader workers a job starts by default, however many cores it may use: a sweep runs several jobs
#: at once, and test sets this size are not read faster by more processes.
MAX_DEFAULT_WORKERS = 8


def available_workers(cap: int = MAX_DEFAULT_WORKERS) -> int:
    """Loader workers for the cores this process may run on (its CPU affinity), at most ``cap``.

    PyTorch warns that a loader "might freeze" when it starts more workers than that; a fixed default of
    4 did so twice per run on a 2-core machine.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(int(cap), cores))


def register_resolvers() -> None:
    """Register ``sweep_folder``, ``sanitize_dirname`` and ``available_workers`` (idempotent)."""
    if not OmegaConf.has_resolver("available_workers"):
        OmegaConf.register_new_resolver(
            "available_workers", lambda cap=MAX_DEFAULT_WORKERS: available_workers(cap)
        )
    if not OmegaConf.has_resolver("sweep_folder"):
        OmegaConf.register_new_resolver("sweep_folder", _sweep_folder, use_cache=True)
    if not OmegaConf.has_resolver("sanitize_dirname"):
        OmegaConf.register_new_resolver("sanitize_dirname", lambda name: sanitize_dirname(name or ""))


register_resolvers()


#: What Hydra writes into a job folder before the job starts: ``.hydra/`` with these files, and the job log.
HYDRA_JOB_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})
HYDRA_SUBDIR = ".hydra"


def _is_empty_tree(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but empty folders (no file, no link, at any depth)."""
    for entry in folder.iterdir():
        if entry.is_symlink() or not entry.is_dir() or not _is_empty_tree(entry):
            return False
    return True


def holds_only_hydra_files(folder: Path, log_name: str, log_may_hold_lines: bool) -> bool:
    """Whether a job folder holds nothing the job wrote: Hydra's ``.hydra/`` files, the job log
    ``log_name`` (empty unless ``log_may_hold_lines``) and empty folders, nothing else and no link."""
    for entry in folder.iterdir():
        if entry.is_symlink():
            return False
        if entry.name == HYDRA_SUBDIR and entry.is_dir():
            if not all(
                f.name in HYDRA_JOB_FILES and f.is_file() and not f.is_symlink() for f in entry.iterdir()
            ):
                return False
        elif entry.name == log_name and entry.is_file():
            if entry.stat().st_size and not log_may_hold_lines:
                return False
        elif not (entry.is_dir() and _is_empty_tree(entry)):
            return False
    return True


def _close_file_logs_in(folder: Path) -> None:
    """Close and detach the logging file handlers writing into ``folder`` (Hydra's job log)."""
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict)),
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            filename = getattr(handler, "baseFilename", None)
            if filename and Path(filename).parent.resolve() == folder:
                handler.close()
                logger.removeHandler(handler)


def _remove_empty_tree(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            _remove_empty_tree(entry)
    folder.rmdir()  # refuses (OSError) if anything appeared meanwhile


def remove_untouched_job_folder(folder: str | os.PathLike, log_name: str, log_may_hold_lines: bool) -> bool:
    """Remove the folder of a job that wrote nothing into it; returns whether it was removed.

    A multirun job's folder is made by Hydra before the job runs. When the job is skipped (a repeated
    zero-shot draw) or fails before writing anything, the folder would stay behind holding only Hydra's
    bookkeeping. It is removed only when :func:`holds_only_hydra_files`, and only the files checked are
    deleted (one by one; folders with ``rmdir``), so a file written meanwhile is never lost.
    """
    folder = Path(folder)
    try:
        if (
            not folder.is_dir()
            or folder.is_symlink()
            or not holds_only_hydra_files(folder, log_name, log_may_hold_lines)
        ):
            return False
        _close_file_logs_in(folder.resolve())
        for name in HYDRA_JOB_FILES:
            (folder / HYDRA_SUBDIR / name).unlink(missing_ok=True)
        (folder / log_name).unlink(missing_ok=True)
        _remove_empty_tree(folder)
    except OSError:
        return False  # something appeared, or the file system refused: keep what is left
    return True


class ResolverCallback(Callback):
    """Names the sweep folder when a multirun starts, and registers the resolvers in launcher workers.

    ``on_multirun_start`` sees the overrides as typed (``shots=0,1,2,4`` still a list) and exports the
    folder name before the launcher resolves ``hydra.sweep.dir``; local and SLURM workers inherit it.
    Workers unpickle Hydra's callbacks before they resolve a job's folder, which imports this module.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        os.environ[SWEEP_FOLDER_ENV] = sweep_folder_name(list(overrides), None)
