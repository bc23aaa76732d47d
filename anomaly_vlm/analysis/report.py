"""One self-contained HTML report of the analyses: figures embedded as base64 PNG, tables, the method
selection, and per ``results.json`` its configuration, versions and git commit."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path

from anomaly_vlm.analysis.analyses import Section
from anomaly_vlm.analysis.records import Record
from anomaly_vlm.reporting.results import git_commit, package_versions

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; white-space: pre-line; color: #444; }
details { font-size: 0.8em; } code, pre { font-size: 0.85em; } pre { overflow-x: auto; }
.note { background: #fff8e0; padding: 0.4em 0.8em; border-left: 3px solid #e0b000; }
"""


def run_anchor(source: str) -> str:
    return "run-" + hashlib.sha256(source.encode()).hexdigest()[:12]


def _sources_html(sources: Sequence[str]) -> str:
    if not sources:
        return ""
    links = "<br>".join(f'<a href="#{run_anchor(s)}"><code>{html.escape(s)}</code></a>' for s in sources)
    return f"<details><summary>{len(sources)} results.json</summary>{links}</details>"


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], sources: Sequence[Sequence[str]]) -> str:
    """A table whose last column lists (folded) the results.json files of each row."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) + "<th>sources</th>"
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
        + f"<td>{_sources_html(row_sources)}</td></tr>"
        for row, row_sources in zip(rows, sources, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(png: Path, title: str, provenance: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    points = json.loads(provenance.read_text())["points"]
    sources = sorted({s for point in points for s in point.get("sources", [])})
    rows = [
        [
            str(point.get("series") or point.get("panel") or ""),
            str(point.get("x", point.get("row", "")))
            + (f" → {point['column']}" if "column" in point else ""),
            str(point.get("metric", "")),
            f"{point['mean']:.2f}"
            if point.get("mean") is not None
            else f"published {point.get('published')}",
            str(point.get("n", "")),
        ]
        for point in points
    ]
    point_table = table_html(
        ["series", "x", "metric", "value", "n"], rows, [point.get("sources", []) for point in points]
    )
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption>"
        f"<details><summary>points of this figure ({len(points)}) from {len(sources)} results.json</summary>"
        f"{point_table}</details></figure>"
    )


def provenance_html(records: Sequence[Record]) -> str:
    """One row per results.json: its configuration (folded), versions and commit."""
    rows = []
    for record in sorted({r.source: r for r in records}.values(), key=lambda r: r.source):
        info = record.provenance()
        git = info.get("git") or {}
        versions = info.get("versions") or {}
        short = ", ".join(
            f"{name} {versions[name]}"
            for name in ("python", "torch", "open_clip_torch", "lightning", "anomaly_vlm")
            if versions.get(name)
        )
        config = json.dumps(record.run.get("config"), indent=1, default=str)
        commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
        rows.append(
            f'<tr id="{run_anchor(record.source)}"><td><code>{html.escape(record.source)}</code></td>'
            f"<td>{html.escape(str(record.value('method')))}</td><td>{html.escape(commit)}</td>"
            f"<td>{html.escape(short)}</td><td>{html.escape(str(info.get('created')))}</td>"
            f"<td><details><summary>config</summary><pre>{html.escape(config)}</pre></details></td></tr>"
        )
    names = ("results.json", "method", "git commit", "versions", "created", "config")
    head = "<tr>" + "".join(f"<th>{name}</th>" for name in names) + "</tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(
    sections: Sequence[Section],
    selection: Sequence[tuple[str, list[str], list[list[str]], list[list[str]]]],
    target: Path,
    scale: str,
    sweeps: Sequence[dict] = (),
) -> Path:
    """Write the report.

    Args:
        sections: the analyses, in order.
        selection: per evaluated dataset ``(title, header, rows, sources)`` of the method-selection table.
        target: the HTML file.
        scale: ``tiny`` or ``published`` (named in the title).
        sweeps: what ran: per sweep its folder, command, exit status and seconds.
    """
    commit = git_commit()
    toc = "".join(f'<li><a href="#{s.name}">{html.escape(s.title)}</a></li>' for s in sections)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>anomaly-vlm analyses ({scale})</title><style>{STYLE}</style></head><body>",
        f"<h1>anomaly-vlm: analyses of VLM anomaly detection ({html.escape(scale)} scale)</h1>",
        f"<p>Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by anomaly-vlm at commit "
        f"<code>{html.escape(str(commit.get('commit')))}</code>"
        f"{' (uncommitted changes)' if commit.get('dirty') else ''}. Every number below is computed from "
        "the results.json files listed with it; the last section gives each file's configuration and "
        "versions.</p>",
    ]
    if scale == "tiny":
        parts.append(
            "<p class='note'>Tiny scale: a tiny random CLIP on synthetic images with short training. The "
            "numbers prove that the analyses run end to end; they say nothing about the methods.</p>"
        )
    parts.append(
        f"<ul><li><a href='#selection'>Method selection</a></li>{toc}<li><a href='#runs'>Runs</a></li></ul>"
    )
    parts.append("<h2 id='selection'>Method selection</h2>")
    parts.append(
        "<p>The best configuration per constraint and task, computed from the shots, resolution and "
        "efficiency results (mean over replicates; a constraint admits every configuration that meets "
        "it). The known weaknesses come from the limitations analysis (its defect types, sizes and "
        "corruptions, measured at each method's standard setting).</p>"
    )
    for title, header, rows, sources in selection:
        parts.append(f"<h3>{html.escape(title)}</h3>{table_html(header, rows, sources)}")
    if not selection:
        parts.append("<p class='note'>No results to select from yet.</p>")
    all_records: list[Record] = []
    for section in sections:
        parts.append(f"<h2 id='{section.name}'>{html.escape(section.title)}</h2>")
        parts.append(f"<p>{html.escape(section.description)}</p>")
        for note in section.notes:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        if not section.records:
            parts.append("<p class='note'>No results yet: run this analysis first.</p>")
        for figure in section.figures:
            parts.append(figure_html(figure.png, figure.title, figure.provenance))
        for table in section.tables:
            parts.append(
                f"<h3>{html.escape(table.title)}</h3>{table_html(table.header, table.rows, table.sources)}"
            )
        all_records += section.records
    if sweeps:
        rows = [
            [s["folder"], " ".join(s["command"]), str(s["returncode"]), f"{s['seconds']:.0f}"] for s in sweeps
        ]
        parts.append("<h2>Sweeps</h2>")
        parts.append(table_html(["folder", "command", "exit", "seconds"], rows, [[] for _ in rows]))
    parts.append("<h2 id='runs'>Runs: configuration and versions of every number</h2>")
    report_versions = ", ".join(f"{k} {v}" for k, v in package_versions().items() if v)
    parts.append(f"<p>Report written with {html.escape(report_versions)}.</p>")
    parts.append(provenance_html(all_records))
    parts.append("</body></html>")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
