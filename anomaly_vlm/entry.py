"""Command-line mistakes the entry points catch before Hydra starts (light: no torch import).

Hydra reports these with a grammar error, a missing-plugin traceback or "Could not override", none of
which tells a new user what to type instead; each is turned into one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence

#: launcher choice -> (plugin module, how to install it)
LAUNCHER_PLUGINS = {
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "pip install -e '.[slurm]' (hydra-submitit-launcher)"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "pip install -e . (hydra-joblib-launcher)"),
}


def _plugin_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


#: Characters of unquoted values Hydra's grammar always reads as plain text; anything else is parsed.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./")


def _parse(override: str):
    """Hydra's reading of ``key=value``: the parsed override, or None when its grammar rejects it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(override)
    except HydraException:
        return None


def _quoted(key: str, value: str) -> str:
    """The override with its value quoted for Hydra, inside quotes for the shell."""
    if "'" in value:
        return f"""'{key}="{value}"'"""
    return '"' + f"{key}='{value}'" + '"'


def _needs_quoting(override: str, multirun: bool) -> str | None:
    """Why ``key=value`` must be quoted (Hydra would reject or split its value), or None."""
    key, _, value = override.partition("=")
    if not value or value[0] in "'\"[{" or set(value) <= _PLAIN:
        return None
    bare_key = key.lstrip("+~")
    parsed = _parse(override)
    if parsed is None:
        return (
            f"{bare_key}={value}: Hydra needs values with spaces, non-ASCII characters or '=' (as in a "
            f"multirun folder's name) in quotes; write {_quoted(key, value)} "
            "(the outer quotes are for the shell)"
        )
    if parsed.is_sweep_override() and "," in value and not multirun:
        return (
            f"{bare_key}={value}: a comma makes Hydra read several values, which only a sweep takes: add -m "
            f"to run one job per value, or for one value that contains a comma write {_quoted(key, value)} "
            "(the outer quotes are for the shell)"
        )
    return None


def _detector_without_predict(argv: Sequence[str], script: str) -> str | None:
    """``detector=`` is read by ``evaluate.py mode=predict`` alone; elsewhere it would be ignored."""
    values = {}
    for argument in argv:
        key, equals, value = argument.partition("=")
        if equals and not argument.startswith("-"):
            values[key.lstrip("+~")] = value
    detector = values.get("detector")
    if detector in (None, "", "null") or values.get("mode") == "predict":
        return None
    command = f"python evaluate.py mode=predict detector={detector} data.path=<image or folder>"
    if script == "train":
        return f"detector= is an option of evaluate.py mode=predict, not train.py: {command}"
    return (
        f"detector={detector} is used only by mode=predict (it scores images with a saved detector; "
        f"mode={values.get('mode', 'test')} measures a method on a labelled dataset and would ignore it): "
        f"{command}"
    )


def command_line_error(
    argv: Sequence[str], script: str, plugin_installed: Callable[[str], bool] = _plugin_installed
) -> str | None:
    """The message for the first mistake in ``argv`` (overrides of ``train.py``/``evaluate.py``), or None."""
    multirun = any(argument in ("-m", "--multirun") or argument == "hydra.mode=MULTIRUN" for argument in argv)
    message = _detector_without_predict(argv, script)
    if message:
        return message
    for argument in argv:
        if argument.startswith("-") or "=" not in argument:
            continue
        key, _, value = argument.partition("=")
        bare_key = key.lstrip("+~")
        if bare_key == "hydra/launcher" and value in LAUNCHER_PLUGINS:
            module, install = LAUNCHER_PLUGINS[value]
            if not plugin_installed(module):
                return f"hydra/launcher={value} needs its Hydra plugin, which is not installed: {install}"
        if script == "train" and bare_key == "mode":
            return (
                f"mode={value} is an option of evaluate.py, not train.py: "
                f"python evaluate.py mode={value} ... (train.py always trains, then tests)"
            )
        quoting = _needs_quoting(argument, multirun)
        if quoting is not None:
            return quoting
    return None


def check_command_line(script: str, argv: Sequence[str] | None = None) -> None:
    """Print ``error: <message>`` and exit 1 when :func:`command_line_error` finds a mistake."""
    message = command_line_error(sys.argv[1:] if argv is None else argv, script)
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1)
