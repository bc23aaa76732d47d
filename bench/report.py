"""The results of a parity check or a benchmark: printed as they come, saved as JSON for the docs.

A :class:`ParityReport` holds one :class:`Row` per compared quantity (its max |Δ|, the target it must
meet, absolute or relative) and the facts needed to reproduce the run (method, official code, settings,
torch version, date). Every harness prints the same table and the same verdict line, and exits with
:meth:`ParityReport.exit_status`: 0 when every quantity meets its target, 1 when one misses.
A :class:`BenchReport` holds a benchmark's figures with the same metadata.

This module imports no torch, so ``--help`` of the bench commands stays fast.
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

#: The default target of an absolute max |Δ| (and of a relative one, ``TARGET_REL``).
TARGET_ABS = 1e-4
TARGET_REL = 1e-4
KINDS = ("abs", "rel")


def torch_version() -> str | None:
    """The torch in use: the imported module's version, else the installed distribution's, else None."""
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def now() -> str:
    """The current time, ISO 8601 with the UTC offset, to the second."""
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Python, torch and machine facts that a figure depends on."""
    return {
        "python": platform.python_version(),
        "torch": torch_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def plain(value: Any) -> Any:
    """``value`` as JSON-friendly data: paths as strings, tuples as lists, numpy numbers as Python numbers,
    anything else as its ``repr``."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return repr(value)


@dataclass
class Row:
    """One compared quantity.

    Attributes:
        quantity: What was compared, e.g. ``"zero-shot final map"``.
        max_delta: max |Δ| between ours and the official value; relative to the largest magnitude of the
            official tensor when ``kind == "rel"``.
        target: The largest ``max_delta`` that passes; ``None`` for a figure shown but not checked.
        kind: ``"abs"`` or ``"rel"``.
    """

    quantity: str
    max_delta: float
    target: float | None
    kind: str = "abs"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        self.max_delta = float(self.max_delta)

    @property
    def checked(self) -> bool:
        return self.target is not None

    @property
    def ok(self) -> bool:
        """Within target (a NaN delta is not); an unchecked row is always ok."""
        return self.target is None or self.max_delta <= self.target

    def closeness(self) -> float:
        """``max_delta / target``: how close the row is to missing (0 for an exact match of a 0 target)."""
        if not self.target:
            return 0.0 if self.max_delta == 0 else math.inf
        return self.max_delta / self.target

    def line(self) -> str:
        if self.target is None:
            return f"  {self.quantity:44s} max|d| = {self.max_delta:.2e} ({self.kind}, not checked)"
        status = "ok" if self.ok else "MISS"
        return (
            f"  {self.quantity:44s} max|d| = {self.max_delta:.2e} "
            f"({self.kind}, target <= {self.target:.0e}) {status}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class ParityReport:
    """The rows of one parity check, its verdict and what it ran against.

    Attributes:
        method: Our method's name (``aprillab``, ...).
        official: Where the official code came from: ``{"folder": ..., "commit": ...}`` for a checkout,
            the interpreter and package versions for a peer implementation in another environment.
        settings: The harness options (image count, widths, precision, ...).
        rows: The compared quantities, in the order they were computed.
        notes: Informative lines printed along the way (sizes, value ranges, losses).
        torch: torch version of our side.
        date: When the check ran.
        echo: Print each row and note as it is added (not saved).
    """

    method: str
    official: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    torch: str | None = field(default_factory=torch_version)
    date: str = field(default_factory=now)
    echo: bool = field(default=True, compare=False, repr=False)

    def add(
        self, quantity: str, max_delta: float, target: float | None = TARGET_ABS, kind: str = "abs"
    ) -> Row:
        """Record (and print) one compared quantity; ``target=None`` shows it without checking it."""
        row = Row(quantity, max_delta, target, kind)
        self.rows.append(row)
        if self.echo:
            print(row.line(), flush=True)
        return row

    def note(self, text: str) -> None:
        """Record (and print) an informative line."""
        self.notes.append(text)
        if self.echo:
            print(text, flush=True)

    @property
    def checked(self) -> list[Row]:
        return [row for row in self.rows if row.checked]

    @property
    def misses(self) -> list[Row]:
        return [row for row in self.rows if not row.ok]

    @property
    def passed(self) -> bool:
        """Every checked quantity within its target, and at least one quantity checked."""
        return bool(self.checked) and not self.misses

    def verdict(self) -> str:
        """The last line: ``PASS: ...`` or ``FAIL: ...``."""
        checked = self.checked
        if not checked:
            return "FAIL: no quantity was checked"
        misses = self.misses
        if misses:
            return f"FAIL: {len(misses)} of {len(checked)} quantities miss their target: " + ", ".join(
                row.quantity for row in misses
            )
        closest = max(checked, key=Row.closeness)
        return (
            f"PASS: all {len(checked)} quantities within target "
            f"(closest: {closest.quantity} {closest.max_delta:.2e})"
        )

    def exit_status(self) -> int:
        """0 when the check passed, 1 when it did not."""
        return 0 if self.passed else 1

    def finish(self, json_path: str | Path | None = None) -> int:
        """Print the verdict, write the JSON file when asked; returns the exit status."""
        print(self.verdict(), flush=True)
        if json_path:
            self.write_json(json_path)
            print(f"report: {json_path}")
        return self.exit_status()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "parity",
            "method": self.method,
            "verdict": "PASS" if self.passed else "FAIL",
            "official": plain(self.official),
            "settings": plain(self.settings),
            "torch": self.torch,
            "date": self.date,
            "rows": [row.to_dict() for row in self.rows],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityReport:
        rows = [Row(r["quantity"], r["max_delta"], r["target"], r["kind"]) for r in data["rows"]]
        return cls(
            method=data["method"],
            official=data.get("official", {}),
            settings=data.get("settings", {}),
            rows=rows,
            notes=list(data.get("notes", [])),
            torch=data.get("torch"),
            date=data.get("date", ""),
            echo=False,
        )

    def write_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read_json(cls, path: str | Path) -> ParityReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class BenchReport:
    """The figures of one benchmark run.

    Attributes:
        benchmark: The benchmark's name (``metrics``, ``cache``, ...).
        settings: Its options.
        results: Its figures (times in seconds or milliseconds as the keys say, sizes in MB or MiB).
        environment: Python, torch and machine (see :func:`environment`); a benchmark adds what its
            figures depend on (threads, device).
        date: When it ran.
        status: The command's exit status: 0, or non-zero when the run failed or its check did not
            hold (e.g. outputs that differ), in which case ``results`` may be partial.
    """

    benchmark: str
    settings: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment)
    date: str = field(default_factory=now)
    status: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "benchmark",
            "benchmark": self.benchmark,
            "settings": plain(self.settings),
            "environment": plain(self.environment),
            "date": self.date,
            "status": self.status,
            "results": plain(self.results),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        return cls(
            benchmark=data["benchmark"],
            settings=data.get("settings", {}),
            results=data.get("results", {}),
            environment=data.get("environment", {}),
            date=data.get("date", ""),
            status=data.get("status", 0),
        )

    def write_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read_json(cls, path: str | Path) -> BenchReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON (an infinite or NaN delta is written as ``Infinity`` / ``NaN``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
