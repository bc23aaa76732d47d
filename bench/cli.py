"""The two bench commands share one shape: ``python -m bench.<kind> <name> [options]``.

The first argument picks a module of the package (``bench/parity/<name>.py``, ``bench/perf/<name>.py``),
which is imported only then: ``python -m bench.parity --help`` lists the names without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType


def pick(
    argv: Sequence[str] | None, package: str, description: str, commands: Mapping[str, str]
) -> tuple[str, ModuleType, list[str]]:
    """The chosen command's name, its module and the arguments that follow it.

    ``--help`` (or no argument) prints the commands and exits; an unknown name exits 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"python -m {package}"
    width = max(len(name) for name in commands)
    listing = "\n".join(f"  {name:{width}s}  {summary}" for name, summary in commands.items())
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"commands:\n{listing}\n\n`{prog} <command> --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=list(commands), metavar="command", help="one of the commands below"
    )
    parser.add_argument("options", nargs="*", help="the command's options")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0 if argv else 2)
    name = argv[0].replace("_", "-")
    if name not in commands:
        parser.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(commands)}")
    module = importlib.import_module(f"{package}.{name.replace('-', '_')}")
    return name, module, argv[1:]


def command_parser(package: str, name: str, module: ModuleType) -> argparse.ArgumentParser:
    """A parser for one command, described by its module's docstring, with the shared ``--json``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {package} {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report to this JSON file")
    return parser
