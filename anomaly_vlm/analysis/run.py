"""Run analyses end to end: sweeps (resumable), then tables and figures, optionally the HTML report.

``python -m anomaly_vlm.analysis <name>... [--scale tiny|published] [--report]`` (the ``make analysis-*``
targets). Output: ``<out>/<scale>/<name>/`` (tables as CSV and Markdown, ``figures/*.png`` each with a
``.json`` of its points and their ``results.json`` files, ``manifest.json`` of the sweeps that ran) and,
with ``--report``, ``<out>/<scale>/report.html``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.analysis.analyses import ANALYSES, SCALES, Section
from anomaly_vlm.analysis.records import Record, environment_root, format_value, load_records
from anomaly_vlm.analysis.report import write_report
from anomaly_vlm.analysis.selection import select, write_selection
from anomaly_vlm.analysis.sweeps import SweepOutcome, run_sweep, sweep_command, sweep_folder
from anomaly_vlm.wording import counted

#: The analyses whose results feed the method-selection table (methods at their standard settings).
SELECTION_SOURCES = ("shots", "resolution", "efficiency")
#: The analysis whose findings fill the selection table's known-weaknesses column.
LIMITATIONS = "limitations"


def _manifest_entry(outcome: SweepOutcome, scale: str, extra: Sequence[str]) -> dict:
    command = ["python", *sweep_command(outcome.sweep, scale, extra)[1:]]
    return {
        "part": outcome.sweep.part,
        "folder": str(outcome.folder),
        "command": command,
        "returncode": outcome.returncode,
        "seconds": round(outcome.seconds, 1),
    }


def analysis_records(name: str, scale: str, output_root: str | Path) -> list[Record]:
    """The results of an analysis's sweep folders."""
    analysis = ANALYSES[name]
    own = load_records(sweep_folder(sweep, scale, output_root) for sweep in analysis.sweeps(scale))
    return [*own, *analysis.borrowed_records(own, scale, output_root)]


def render(name: str, scale: str, output_root: str | Path, out: Path) -> Section:
    """Tables and figures of one analysis from whatever results its sweep folders hold."""
    records = analysis_records(name, scale, output_root)
    return ANALYSES[name].render(records, out / scale / name, scale)


def selection_tables(
    records: Sequence[Record], out: Path, weaknesses: Mapping[str, Sequence[str]] | None = None
) -> list[tuple[str, list[str], list[list[str]], list[list[str]]]]:
    """The method-selection table per evaluated data (methods are only compared on the same images);
    ``weaknesses`` (per method, from the limitations analysis) adds a column."""
    by_data: dict[str, list[Record]] = defaultdict(list)
    for record in {r.source: r for r in records}.values():
        data = str(record.value("dataset"))
        categories = record.value("data.categories")
        if categories:
            data += f" {format_value(categories)}"
        by_data[data].append(record)
    tables = []
    for data, members in sorted(by_data.items()):
        stem = out / ("selection_" + "".join(c if c.isalnum() else "_" for c in data).strip("_"))
        header, rows, sources = write_selection(select(members), stem, weaknesses)
        tables.append((f"test data: {data}", header, rows, sources))
    return tables


def run_analyses(
    names: Sequence[str],
    scale: str,
    out: Path,
    output_root: str | Path,
    extra: Sequence[str] = (),
    run: bool = True,
    report: bool = False,
) -> tuple[list[Section], list[SweepOutcome], Path | None]:
    """Run the sweeps of the named analyses (once each, also when shared), render them, write the report.

    Returns:
        The sections, the sweep outcomes, and the report path (None without ``report``).
    """
    outcomes: dict[str, SweepOutcome] = {}
    sections = []
    for name in names:
        analysis = ANALYSES[name]
        started = time.perf_counter()
        entries = []
        if run:
            for sweep in analysis.sweeps(scale):
                if sweep.part not in outcomes:
                    outcomes[sweep.part] = run_sweep(sweep, scale, output_root, extra)
                entries.append(_manifest_entry(outcomes[sweep.part], scale, extra))
        section = render(name, scale, output_root, out)
        folder = out / scale / name
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "manifest.json"
        if not run and manifest.is_file():
            # A redraw keeps the record of the sweeps that produced the results.
            entries = json.loads(manifest.read_text()).get("sweeps", [])
        manifest.write_text(
            json.dumps(
                {
                    "analysis": name,
                    "scale": scale,
                    "sweeps": entries,
                    "seconds": round(time.perf_counter() - started, 1),
                    "results": [r.source for r in section.records],
                    "figures": [str(f.png) for f in section.figures],
                    "tables": [str(t.csv) for t in section.tables],
                },
                indent=1,
            )
        )
        print(
            f"[analysis] {name}: {counted(len(section.records), 'result')}, "
            f"{counted(len(section.figures), 'figure')}, {counted(len(section.tables), 'table')} -> {folder}",
            flush=True,
        )
        sections.append(section)
    target = None
    if report:
        pool = [r for s in sections if s.name in SELECTION_SOURCES for r in s.records]
        measured = [s for s in sections if s.name == LIMITATIONS]
        weaknesses = {m: w for s in measured for m, w in s.weaknesses.items()} if measured else None
        selection = selection_tables(pool, out / scale, weaknesses)
        sweeps = [_manifest_entry(o, scale, extra) for o in outcomes.values()]
        target = write_report(sections, selection, out / scale / "report.html", scale, sweeps)
        print(f"[analysis] report -> {target}", flush=True)
    return sections, list(outcomes.values()), target


def missing_results(
    names: Sequence[str], scale: str, output_root: str | Path, options: Sequence[str] = ()
) -> dict[str, str]:
    """Per analysis whose sweep folders hold no results, the ``error:`` message for ``--no-run``: where it
    looked, and the command (with ``options``, e.g. ``--outputs``) that runs its sweeps first."""
    messages = {}
    for name in names:
        if analysis_records(name, scale, output_root):
            continue
        folders = [sweep_folder(sweep, scale, output_root) for sweep in ANALYSES[name].sweeps(scale)]
        more = counted(len(folders) - 1, "more sweep folder")
        where = str(folders[0]) + (f" and {more}" if len(folders) > 1 else "")
        command = shlex.join([name, "--scale", scale, *options])
        messages[name] = (
            f"analysis '{name}' ({scale}) has no results in {where}: --no-run only redraws finished sweeps; "
            f"run them first: python -m anomaly_vlm.analysis {command}"
        )
    return messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_vlm.analysis",
        description="The paper's analyses: run their sweeps (resumable), write tables, figures and a report.",
    )
    parser.add_argument(
        "names", nargs="+", choices=[*ANALYSES, "all"], help="analyses to run ('all': every one)"
    )
    parser.add_argument("--scale", choices=SCALES, default="published", help="tiny: offline CPU check")
    parser.add_argument("--out", default="reports/analysis", help="folder of tables, figures and the report")
    parser.add_argument("--outputs", default=None, help="output root of the sweeps (default: as train.py)")
    parser.add_argument(
        "--args",
        default="",
        help="extra overrides for every sweep, e.g. 'hydra/launcher=joblib hydra.launcher.n_jobs=2'",
    )
    parser.add_argument("--no-run", action="store_true", help="only render the results already there")
    parser.add_argument("--report", action="store_true", help="also write the HTML report")
    args = parser.parse_args(argv)
    names = list(ANALYSES) if "all" in args.names else list(dict.fromkeys(args.names))
    output_root = args.outputs or environment_root()
    missing = {}
    if args.no_run:
        options = [
            *(["--outputs", args.outputs] if args.outputs else []),
            *(["--args", args.args] if args.args else []),
        ]
        missing = missing_results(names, args.scale, output_root, options)
        for message in missing.values():
            print(f"error: {message}", file=sys.stderr, flush=True)
        names = [name for name in names if name not in missing]
        if not names:
            return 1  # nothing to draw: no manifest or empty report is written
    started = time.perf_counter()
    _, outcomes, _ = run_analyses(
        names,
        args.scale,
        Path(args.out),
        output_root,
        extra=shlex.split(args.args),
        run=not args.no_run,
        report=args.report,
    )
    print(f"[analysis] {', '.join(names)} ({args.scale}): {time.perf_counter() - started:.0f} s", flush=True)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(
            f"error: sweep {outcome.folder} failed (exit {outcome.returncode}); rerun to resume",
            file=sys.stderr,
        )
    return 1 if failed or missing else 0
