"""Paper-shaped tables from the ``results.json`` files of one or more sweeps.

``python -m anomaly_vlm.reporting.tables --results <sweep folder>... --out reports/`` (``make tables``)
writes, per evaluated dataset:

* ``<dataset>_summary.{md,csv,tex}`` — rows method × shots (with backbone and prompt set), columns image
  AUROC/AP/F1max and pixel AUROC/AP/F1max/AUPRO as mean ± std over seeds, the published number and
  Δ = ours − published beside ours wherever the paper reports that cell (``published.json``);
* ``<dataset>_per_category.{md,csv,tex}`` — the same per category, one block per configuration;
* ``<dataset>_efficiency.{md,csv}`` — ms/image, images/s, GFLOPs/image, parameters, peak memory;
* the plots of :mod:`anomaly_vlm.reporting.plots`.

Values are percentages with one decimal, as in the papers.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path, PurePath
from typing import Any

from anomaly_vlm.metrics import METRIC_NAMES
from anomaly_vlm.reporting.collection import read_runs
from anomaly_vlm.reporting.console import METRIC_HEADERS
from anomaly_vlm.reporting.identity import config_fields, flatten_config, uses_prompts
from anomaly_vlm.reporting.results import RESULTS_FILE
from anomaly_vlm.reporting.runs import (
    AUTHORS_WEIGHTS,
    NO_PROMPTS,
    TRAINED_HERE,
    Group,
    load_published,
    published_value,
)

log = logging.getLogger(__name__)

__all__ = [
    "Group",
    "config_fields",
    "flatten_config",
    "load_published",
    "make_tables",
    "published_value",
]

EFFICIENCY_FIELDS = (
    ("ms_per_image", "ms/image", 1.0),
    ("images_per_s", "images/s", 1.0),
    ("flops_per_image", "GFLOPs/image", 1e-9),
    ("total_parameters", "params (M)", 1e-6),
    ("trainable_parameters", "trainable (M)", 1e-6),
    ("peak_gpu_memory_mb", "peak GPU MB", 1.0),
    ("peak_cpu_memory_mb", "peak CPU MB", 1.0),
)


#: Every category of the benchmark datasets: the published means are over all of them, so a run over a
#: subset is marked partial and gets no Δ against them.
FULL_CATEGORIES: dict[str, tuple[str, ...]] = {}


def full_categories(dataset: str) -> tuple[str, ...] | None:
    """The complete category list of a benchmark dataset (None for other datasets)."""
    if not FULL_CATEGORIES:
        from anomaly_vlm.data.datasets.mvtec import MVTEC_CATEGORIES
        from anomaly_vlm.data.datasets.visa import VISA_CATEGORIES

        FULL_CATEGORIES.update(mvtec=MVTEC_CATEGORIES, visa=VISA_CATEGORIES)
    return FULL_CATEGORIES.get(dataset)


TRANSDUCTIVE_NOTE = (
    "Rows marked (transductive) score each test image against the other unlabelled test images of its "
    "category (e.g. MuSc): a different protocol from the inductive rows, which score each image on its "
    "own; they are listed separately and must not be ranked with them."
)


# ----- collecting results ---------------------------------------------------------------------------------
def latest_sweeps(output_root: str | Path = "outputs") -> list[Path]:
    """The most recently finished sweep folder of each task (``<root>/<task>/multiruns/<sweep>``)."""
    latest: list[Path] = []
    for multiruns in sorted(Path(output_root).glob("*/multiruns")):
        sweeps = [folder for folder in multiruns.iterdir() if folder.is_dir()]
        stamped = [
            (max(path.stat().st_mtime for path in files), folder)
            for folder in sweeps
            if (files := list(folder.rglob(RESULTS_FILE)))
        ]
        if stamped:
            latest.append(max(stamped)[1])
    return latest


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value)


def readable_values(values: list[Any]) -> list[str]:
    """Values as a row label shows them: paths by the shortest trailing part that still tells them apart
    (``…/line_a/parts``), everything else as it is."""
    if not values or not all(_looks_like_path(value) for value in values):
        return [str(value) for value in values]
    parts = [PurePath(value).parts for value in values]
    distinct = len(set(values))
    for count in range(1, max(len(p) for p in parts) + 1):
        tails = [p[-count:] for p in parts]
        if len(set(tails)) == distinct:
            return [
                value if len(p) <= count else "…/" + "/".join(tail)
                for value, p, tail in zip(values, parts, tails, strict=True)
            ]
    return [str(value) for value in values]


def _variants(runs: list[tuple[tuple, dict]]) -> list[str]:
    """Per run, the config values that differ between runs of the same named configuration.

    Two sweeps that differ only in e.g. ``data.categories`` or ``trainer.max_epochs`` have the same
    method/backbone/prompts/shots; without this they would be averaged into one row.
    """
    fields = [config_fields(run) for _, run in runs]
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for index, (key, _) in enumerate(runs):
        by_key[key].append(index)
    variants = [""] * len(runs)
    for indices in by_key.values():
        keys = sorted({name for i in indices for name in fields[i]})
        differing = [name for name in keys if len({fields[i].get(name) for i in indices}) > 1]
        shown = {
            name: readable_values([json.loads(fields[i].get(name, "null")) for i in indices])
            for name in differing
        }
        for position, i in enumerate(indices):
            variants[i] = ", ".join(f"{name}={shown[name][position]}" for name in differing)
    return variants


def collect(folders: list[str | Path]) -> list[Group]:
    """Group the finished runs below ``folders`` (or of the files given) by configuration."""
    return collect_runs(read_runs(folders).runs)


def collect_runs(runs: list[tuple[Path, dict]]) -> list[Group]:
    """Group finished runs by configuration.

    ``runs``: ``(path, results)``, one per run (:func:`~anomaly_vlm.reporting.collection.read_runs`).

    Runs whose configs differ in anything but the replicate seeds and the keys that cannot change a
    number (:mod:`anomaly_vlm.reporting.identity`) are separate configurations (rows), labelled with the
    differing values.
    """
    groups: dict[tuple, Group] = {}
    keyed = [
        (
            (
                run.get("dataset") or "unknown",
                run.get("method") or "unknown",
                run.get("backbone") or "unknown",
                (run.get("prompts") or "unknown") if uses_prompts(run) else NO_PROMPTS,
                int(run.get("shots") or 0),
                run.get("train_dataset"),
                bool(run.get("untrained", False)),
                run.get("aupro") or "exact",
                "official" if run.get("checkpoint_origin") == "official" else None,
            ),
            run,
        )
        for _, run in runs
    ]
    for (key, run), variant in zip(keyed, _variants(keyed), strict=True):
        key = (*key, variant)
        if key not in groups:
            groups[key] = Group(*key)
        groups[key].runs.append(run)
    # Transductive rows form their own block after the inductive ones of a dataset.
    return sorted(
        groups.values(),
        key=lambda g: (g.dataset, g.transductive, g.method, g.backbone, g.prompts, g.variant, g.shots),
    )


# ----- cells ------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def ours_cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def summary_rows(groups: list[Group], published: list[dict]) -> list[dict[str, Any]]:
    """One row per configuration: ours (mean, std, n), published and Δ per metric."""
    rows = []
    for group in groups:
        full = full_categories(group.dataset)
        covered = [category for category in (full or ()) if category in group.categories]
        partial = bool(full) and len(covered) < len(full)
        method_label = group.method_label
        if partial:
            method_label += f" (partial: {len(covered)}/{len(full)} categories)"
        row: dict[str, Any] = {
            "method": group.method,
            "method_label": method_label,
            "variant": group.variant,
            "partial": partial,
            "backbone": group.backbone,
            "prompts": group.prompts,
            "shots": group.shots,
            "train_dataset": group.train_dataset,
            "aupro": group.aupro,
            "seeds": len(group.seeds),
        }
        for metric in METRIC_NAMES:
            values = group.metric_values(metric)
            mean, std = mean_std(values)
            paper, source = published_value(published, group.method, group.dataset, group.shots, metric)
            if group.untrained:
                paper, source = None, None  # the published numbers are of trained parameters
            row[metric] = {
                "values": values,
                "mean": mean,
                "std": std,
                "published": paper,
                "delta": None if mean is None or paper is None or partial else mean - paper,
                "source": source,
            }
        for key, _, scale in EFFICIENCY_FIELDS:
            mean, _ = mean_std(group.efficiency_values(key))
            row[key] = None if mean is None else mean * scale
        row["transductive"] = group.transductive
        row["shots_label"] = group.shots_label
        row["untrained"] = group.untrained
        row["checkpoint_origin"] = group.checkpoint_origin
        rows.append(row)
    return rows


def format_delta(delta: float | None) -> str:
    """Δ with one decimal and a sign; a difference that rounds to zero is ``+0.0``, never ``-0.0``."""
    if delta is None:
        return "—"
    return f"{0.0 if abs(delta) < 0.05 else delta:+.1f}"


def display_cell(cell: dict) -> str:
    text = ours_cell(cell["values"])
    if cell["published"] is not None:
        text += f" ({cell['published']:.1f}, Δ {format_delta(cell['delta'])})"
    return text


# ----- writers -------------------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return (
        text.replace("\\", "\\textbackslash{}")
        .replace("_", "\\_")
        .replace("%", "\\%")
        .replace("&", "\\&")
        .replace("#", "\\#")
        .replace("±", "$\\pm$")
        .replace("Δ", "$\\Delta$")
        .replace("—", "--")
    )


def latex_table(header: list[str], rows: list[list[str]], caption: str) -> str:
    spec = "l" * 3 + "r" * (len(header) - 3)
    lines = [
        "\\begin{table}[t]",
        "\\centering\\small",
        f"\\caption{{{_latex_escape(caption)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_latex_escape(cell) for cell in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    """A CSV cell: absent values (None, no prompt set) are empty."""
    return "" if value is None or value == NO_PROMPTS else value


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


#: The metric whose value depends on the variant a run computed (``metrics.aupro``).
AUPRO_METRIC = "pixel_aupro"


def aupro_variants(variants: list[str]) -> list[str]:
    """The AUPRO variants among rows, ``exact`` first."""
    return sorted(set(variants), key=lambda variant: (variant != "exact", variant))


def metric_columns(variants: list[str]) -> list[tuple[str, str | None]]:
    """``(metric, variant)`` per displayed column: AUPRO gets one column per variant among the rows (two
    variants are never one column), every other metric one column (variant None)."""
    columns: list[tuple[str, str | None]] = []
    for metric in METRIC_NAMES:
        if metric == AUPRO_METRIC:
            columns += [(metric, variant) for variant in aupro_variants(variants) or ["exact"]]
        else:
            columns.append((metric, None))
    return columns


def column_header(metric: str, variant: str | None) -> str:
    """``I-AUROC``, or ``P-AUPRO (official)``: the AUPRO header always names its variant."""
    return f"{METRIC_HEADERS[metric]} ({variant})" if variant else METRIC_HEADERS[metric]


def write_summary(dataset: str, groups: list[Group], published: list[dict], out: Path) -> list[dict]:
    rows = summary_rows(groups, published)
    shown = metric_columns([row["aupro"] for row in rows])
    header = ["method", "backbone / prompts", "shots", *(column_header(m, v) for m, v in shown)]
    display = [
        [
            row["method_label"],
            f"{row['backbone']} / {row['prompts']}",
            row["shots_label"],
            *(display_cell(row[m]) if v in (None, row["aupro"]) else "—" for m, v in shown),
        ]
        for row in rows
    ]
    sources = sorted({row[m]["source"] for row in rows for m in METRIC_NAMES if row[m]["source"]})
    note = f"{dataset}: mean ± std over seeds (percent)"
    if any(row[m]["published"] is not None for row in rows for m in METRIC_NAMES):
        note += "; in brackets the published value and Δ = ours − published"
    if any(row["partial"] for row in rows):
        note += "; rows marked partial cover only some categories, so they get no Δ"
    note += "."
    if any(row["aupro"] != "exact" for row in rows):
        note += (
            " P-AUPRO (exact) is MVTec's AUPRO, P-AUPRO (official) the 200-threshold variant of the"
            " APRIL-GAN / AnomalyCLIP evaluation code, which their papers report; a row has a value in the"
            " column of the variant it computed."
        )
    md = [f"# {dataset}\n", note + "\n", markdown_table(header, display)]
    if sources:
        md.append("\nPublished values: " + "; ".join(sources) + "\n")
    comparison = weights_comparison(rows, shown)
    if comparison:
        md.append(comparison)
    if any(row["transductive"] for row in rows):
        md.append("\n" + TRANSDUCTIVE_NOTE + "\n")
    (out / f"{dataset}_summary.md").write_text("\n".join(md))
    (out / f"{dataset}_summary.tex").write_text(latex_table(header, display, note))
    with (out / f"{dataset}_summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = [
            "method",
            "backbone",
            "prompts",
            "shots",
            "train_dataset",
            "aupro",
            "variant",
            "partial",
            "seeds",
        ]
        for metric in METRIC_NAMES:
            columns += [f"{metric}_mean", f"{metric}_std", f"{metric}_published", f"{metric}_delta"]
        columns += [key for key, _, _ in EFFICIENCY_FIELDS]
        writer.writerow([*columns, "transductive"])
        for row in rows:
            line = [_csv_value(row[c]) for c in columns[:9]]
            for metric in METRIC_NAMES:
                cell = row[metric]
                line += [_fmt(cell["mean"]), _fmt(cell["std"]), _fmt(cell["published"]), _fmt(cell["delta"])]
            line += [_fmt(row[key], 4) for key, _, _ in EFFICIENCY_FIELDS]
            line.append(row["transductive"])
            writer.writerow(line)
    return rows


def weights_comparison(rows: list[dict], shown: list[tuple[str, str | None]]) -> str | None:
    """Published, authors' weights and trained here side by side, per configuration and metric.

    One block per configuration tested with the authors' released weights (``checkpoint_origin:
    official``); "trained here" is the row of the same method, backbone, prompts, shots and AUPRO variant
    whose parameters this project trained. None when no row used the authors' weights.
    """
    official = [row for row in rows if row["checkpoint_origin"] == "official"]
    if not official:
        return None

    def same(row: dict) -> tuple:
        return (row["method"], row["backbone"], row["prompts"], row["shots"], row["aupro"], row["partial"])

    trained = {
        same(row): row
        for row in rows
        if row["checkpoint_origin"] != "official" and not row["untrained"] and not row["variant"]
    }
    header = ["method", "backbone / prompts", "shots", "metric", "published", AUTHORS_WEIGHTS, TRAINED_HERE]
    lines = []
    for row in official:
        here = trained.get(same(row))
        for metric, variant in shown:
            if variant not in (None, row["aupro"]):
                continue
            cells = [row[metric]["published"], row[metric]["mean"], here[metric]["mean"] if here else None]
            if all(cell is None for cell in cells):
                continue
            lines.append(
                [
                    row["method"],
                    f"{row['backbone']} / {row['prompts']}",
                    row["shots_label"],
                    column_header(metric, variant),
                    *("—" if cell is None else f"{cell:.1f}" for cell in cells),
                ]
            )
    intro = (
        "\n## Published, authors' weights, trained here\n\n"
        "The paper's number; the authors' released weights tested by this project (`ckpt_path=<their "
        "file>`, `CKPT=official`); parameters this project trained itself. Percent, means over seeds.\n\n"
    )
    return intro + markdown_table(header, lines)


def write_per_category(dataset: str, groups: list[Group], out: Path) -> None:
    head = ["method", "backbone / prompts", "shots", "category"]
    columns = metric_columns([group.aupro for group in groups])
    md = [f"# {dataset}: per category\n", "Mean ± std over seeds (percent).\n"]
    all_rows: list[list[str]] = []
    with (out / f"{dataset}_per_category.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "backbone",
                "prompts",
                "shots",
                "aupro",
                "category",
                *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")),
            ]
        )
        for group in groups:
            rows = []
            for category in [*group.categories, None]:
                name = category or "mean"
                cells = [
                    ours_cell(group.metric_values(m, category)) if v in (None, group.aupro) else "—"
                    for m, v in columns
                ]
                rows.append(
                    [
                        group.method_label,
                        f"{group.backbone} / {group.prompts}",
                        group.shots_label,
                        name,
                        *cells,
                    ]
                )
                stats = [mean_std(group.metric_values(m, category)) for m in METRIC_NAMES]
                writer.writerow(
                    [
                        group.method,
                        group.backbone,
                        _csv_value(group.prompts),
                        group.shots,
                        group.aupro,
                        name,
                        *(x for mean, std in stats for x in (_fmt(mean), _fmt(std))),
                    ]
                )
            # A block holds one configuration, so one AUPRO variant: its column alone, named.
            own = [i for i, (_, v) in enumerate(columns) if v in (None, group.aupro)]
            block_header = ["category", *(column_header(*columns[i]) for i in own)]
            md.append(f"\n## {group.label} | shots={group.shots_label}\n")
            md.append(markdown_table(block_header, [[row[3], *(row[4 + i] for i in own)] for row in rows]))
            all_rows += rows
    (out / f"{dataset}_per_category.md").write_text("\n".join(md))
    header = [*head, *(column_header(m, v) for m, v in columns)]
    (out / f"{dataset}_per_category.tex").write_text(
        latex_table(header, all_rows, f"{dataset}: per-category results, mean ± std over seeds (percent).")
    )


def write_efficiency(dataset: str, rows: list[dict], out: Path) -> None:
    header = ["method", "backbone / prompts", "shots", *(title for _, title, _ in EFFICIENCY_FIELDS)]
    display = [
        [
            row["method_label"],
            f"{row['backbone']} / {row['prompts']}",
            row["shots_label"],
            *(_fmt(row[key], 2) or "—" for key, _, _ in EFFICIENCY_FIELDS),
        ]
        for row in rows
    ]
    (out / f"{dataset}_efficiency.md").write_text(
        f"# {dataset}: efficiency\n\nms/image is the median after warm-up; FLOPs counted by torch's "
        "FlopCounterMode on one image.\n\n" + markdown_table(header, display)
    )
    with (out / f"{dataset}_efficiency.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "backbone", "prompts", "shots", *(key for key, _, _ in EFFICIENCY_FIELDS)])
        for row in rows:
            writer.writerow(
                [
                    row["method"],
                    row["backbone"],
                    _csv_value(row["prompts"]),
                    row["shots"],
                    *(_fmt(row[key], 4) for key, _, _ in EFFICIENCY_FIELDS),
                ]
            )


def make_tables(
    results: list[str | Path],
    out: str | Path,
    published_path: str | Path | None = None,
    plots: bool = True,
    read_counts: dict[str, tuple[int, int]] | None = None,
) -> list[Path]:
    """Write every table (and plot) for the results below ``results`` into ``out``.

    Args:
        results: folders (or results.json files).
        out: the folder for the tables and plots.
        published_path: published numbers JSON (default: the packaged one).
        plots: also draw the plots.
        read_counts: filled with ``folder -> (complete, skipped)``: the complete results.json found below
            each folder, and the others (a job still running or failed, a file that cannot be read).

    Returns:
        The files written.

    Raises:
        FileNotFoundError: a results folder does not exist, or none holds a complete results.json.
    """
    collection = read_runs(results)
    if read_counts is not None:
        read_counts.update(collection.counts)
    groups = collect_runs(collection.runs)
    if not groups:
        raise FileNotFoundError(
            f"no complete {RESULTS_FILE} below {[str(r) for r in results]}; run a sweep first "
            "(python train.py -m ...) or pass RESULTS=<sweep folder>"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    published = load_published(published_path)
    by_dataset: dict[str, list[Group]] = defaultdict(list)
    for group in groups:
        by_dataset[group.dataset].append(group)
    before = set(out.rglob("*"))
    for dataset, dataset_groups in by_dataset.items():
        rows = write_summary(dataset, dataset_groups, published, out)
        write_per_category(dataset, dataset_groups, out)
        write_efficiency(dataset, rows, out)
        if plots:
            from anomaly_vlm.reporting import plots as plotting

            plotting.make_plots(dataset, dataset_groups, rows, published, out)
    return sorted(path for path in set(out.rglob("*")) - before if path.is_file()) or sorted(
        out.rglob("*.md")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Paper-shaped tables and plots from results.json files.")
    parser.add_argument(
        "--results",
        nargs="*",
        default=None,
        help="sweep folders (or results.json files); default: the latest sweep of each task under --outputs",
    )
    parser.add_argument("--outputs", default="outputs", help="output root searched for the latest sweeps")
    parser.add_argument("--out", default="reports", help="folder for the tables and plots")
    parser.add_argument(
        "--published", default=None, help="published numbers JSON (default: the packaged one)"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)  # e.g. dropped duplicates
    results = args.results or latest_sweeps(args.outputs)
    if not results:
        parser.error(f"no sweep folders with results under '{args.outputs}/*/multiruns'; pass --results")
    counts: dict[str, tuple[int, int]] = {}
    try:
        written = make_tables(results, args.out, args.published, plots=not args.no_plots, read_counts=counts)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"read {len(counts)} folder(s):")
    for folder, (complete, skipped) in counts.items():
        line = f"  {folder}: {complete} result{'' if complete == 1 else 's'}"
        print(line + (f" ({skipped} incomplete or unreadable, skipped)" if skipped else ""))
    print(f"tables -> {args.out}")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
