"""Where the methods fail: per defect type, per defect size, per category, under corruptions, and a gallery.

Everything here is computed from ``results.json`` and the predictions a run saved
(``save_predictions=true``: each image's score and defect type, its anomaly map and mask;
:func:`~anomaly_vlm.reporting.predictions.read_predictions`) and from the run's own decision thresholds
(``decisions.thresholds`` of results.json, chosen by ``threshold.method``). Nothing is re-read from
folder names or recomputed by a method.

* Defect types: image AUROC of each type's images against the category's normal images, and the share of
  them above the image threshold (recall at the detector's threshold).
* Defect size: every ground-truth region (8-connected, as in AUPRO) is binned by its area as a fraction of
  the image; per bin the region-level recall at the pixel threshold (a region is found when at least
  :data:`REGION_FOUND` of its pixels are above it) and the mean per-region overlap (that share).
* Categories: ranked by image AUROC per method, textures against objects.
* Corruptions: the AUROC drop of each corruption and strength against the same configuration on clean
  images (``datamodule.test_corruption``, seeded per image, identical for every method).
* Gallery: per method and category the lowest-scored anomalous and highest-scored normal images with their
  heatmap, mask outline, score and threshold.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from scipy import ndimage  # noqa: E402

from anomaly_vlm.analysis.figures import FigureOutput, Provenance, _save  # noqa: E402
from anomaly_vlm.analysis.records import Record, dump  # noqa: E402
from anomaly_vlm.analysis.tables import Table, write_rows  # noqa: E402
from anomaly_vlm.data.corruptions import CORRUPTIONS  # noqa: E402
from anomaly_vlm.data.toy.render import TEXTURE_CATEGORIES as TOY_TEXTURES  # noqa: E402
from anomaly_vlm.metrics.functional import auroc  # noqa: E402
from anomaly_vlm.reporting.overlays import colorize  # noqa: E402
from anomaly_vlm.reporting.predictions import CategoryPredictions, read_predictions  # noqa: E402

#: Region-size bins: (low, high, label) as fractions of the image area.
SIZE_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.001, "< 0.1 %"),
    (0.001, 0.01, "0.1–1 %"),
    (0.01, 0.1, "1–10 %"),
    (0.1, 1.01, "> 10 %"),
)
#: A region counts as found when at least this share of its pixels is above the pixel threshold.
REGION_FOUND = 0.5
#: Textures: MVTec AD's five, the toy dataset's, and every category of the texture datasets.
TEXTURES = frozenset({"carpet", "grid", "leather", "tile", "wood", *TOY_TEXTURES})
TEXTURE_DATASETS = frozenset({"dtd_synthetic", "dagm", "ksdd", "ksdd2"})
CORRUPTION_KEYS = ("datamodule.test_corruption", "datamodule.test_corruption_strength")
#: Weakness rules: a size bin with at least this many regions and a recall below the limit; a defect type
#: or corruption this many AUROC points below the method's clean figure.
MIN_REGIONS = 3
RECALL_LIMIT = 0.5
AUROC_GAP = 10.0
DROP_LIMIT = 5.0


def kind_of(category: str, dataset: str | None) -> str:
    """``texture`` or ``object``."""
    return "texture" if category in TEXTURES or (dataset or "") in TEXTURE_DATASETS else "object"


def corruption_of(record: Record) -> tuple[str, int] | None:
    """The corruption a run tested under (None: clean images)."""
    kind = record.value("datamodule.test_corruption")
    if kind in (None, "", "none", "null"):
        return None
    return str(kind), int(record.value("datamodule.test_corruption_strength") or 1)


def clean_key(record: Record) -> str:
    """The configuration without its corruption: a corrupted run and its clean twin share it."""
    fields = {key: value for key, value in record.fields().items() if not key.startswith(CORRUPTION_KEYS)}
    return dump(fields)


def label_of_run(record: Record) -> str:
    """The method, with its shots when few-shot (``winclip 1-shot``)."""
    shots = int(record.value("shots") or 0)
    return f"{record.value('method')}" + (f" {shots}-shot" if shots else "")


def thresholds(record: Record, category: str) -> tuple[float | None, float | None]:
    """The run's image and pixel thresholds of a category (None where it chose none)."""
    chosen = ((record.run.get("decisions") or {}).get("thresholds") or {}).get(category) or {}
    image, pixel = chosen.get("image"), chosen.get("pixel")
    return (None if image is None else float(image)), (None if pixel is None else float(pixel))


def predictions_of(record: Record) -> dict[str, CategoryPredictions]:
    """The predictions saved beside a results.json ({} when the run saved none)."""
    return read_predictions(record.path.parent / "predictions")


# ----- the computations (pure, on saved predictions) ------------------------------------------------------
@dataclass
class TypeResult:
    """One defect type of one category: its images against the category's normal images."""

    category: str
    defect_type: str
    images: int
    image_auroc: float | None
    recall: float | None


def defect_type_results(predictions: CategoryPredictions, image_threshold: float | None) -> list[TypeResult]:
    """Per defect type of the category's anomalous images: image AUROC against its normal images (percent)
    and the share of its images scored above the image threshold."""
    types = np.array(predictions.defect_types)
    normal = predictions.labels == 0
    results = []
    for kind in sorted(set(types[predictions.labels == 1])):
        chosen = (predictions.labels == 1) & (types == kind)
        both = normal | chosen
        value = None
        if normal.any():
            value = 100.0 * auroc(predictions.scores[both], chosen[both].astype(int))
        recall = None
        if image_threshold is not None:
            recall = float(np.mean(predictions.scores[chosen] > image_threshold))
        results.append(TypeResult(predictions.category, str(kind), int(chosen.sum()), value, recall))
    return results


@dataclass
class RegionResult:
    """One ground-truth region: its area as a fraction of the image and the share of it above threshold."""

    category: str
    defect_type: str
    key: str
    fraction: float
    overlap: float | None


_EIGHT = np.ones((3, 3), dtype=bool)


def region_results(predictions: CategoryPredictions, pixel_threshold: float | None) -> list[RegionResult]:
    """Every ground-truth region of the category's anomalous images (none without masks)."""
    masks, maps = predictions.masks(), predictions.maps()
    if masks is None or maps is None:
        return []
    results = []
    for key, label, kind in zip(predictions.keys, predictions.labels, predictions.defect_types, strict=True):
        if label != 1 or key not in masks.files:
            continue
        mask = masks[key].astype(bool)
        regions, count = ndimage.label(mask, structure=_EIGHT)
        if not count:
            continue
        above = None if pixel_threshold is None else maps[key] > pixel_threshold
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        hits = (
            None
            if above is None
            else np.bincount(regions.ravel(), weights=above.ravel(), minlength=count + 1)
        )
        for region in range(1, count + 1):
            overlap = None if hits is None else float(hits[region] / sizes[region])
            results.append(
                RegionResult(predictions.category, kind, key, float(sizes[region] / mask.size), overlap)
            )
    return results


def size_bin(fraction: float) -> str:
    for low, high, label in SIZE_BINS:
        if low <= fraction < high:
            return label
    return SIZE_BINS[-1][2]


@dataclass
class BinResult:
    """The regions of one size bin: how many, the share found, the mean overlap."""

    label: str
    regions: int
    recall: float | None
    overlap: float | None


def size_bins(regions: Sequence[RegionResult]) -> list[BinResult]:
    """Region-level recall and mean overlap per size bin (bins without regions are left out)."""
    by_bin: dict[str, list[RegionResult]] = defaultdict(list)
    for region in regions:
        by_bin[size_bin(region.fraction)].append(region)
    results = []
    for _, _, label in SIZE_BINS:
        members = by_bin.get(label, [])
        if not members:
            continue
        overlaps = [r.overlap for r in members if r.overlap is not None]
        recall = float(np.mean([o >= REGION_FOUND for o in overlaps])) if overlaps else None
        results.append(BinResult(label, len(members), recall, float(np.mean(overlaps)) if overlaps else None))
    return results


@dataclass
class RunFindings:
    """What one clean run with saved predictions shows."""

    record: Record
    label: str
    types: list[TypeResult] = field(default_factory=list)
    regions: list[RegionResult] = field(default_factory=list)
    has_pixel_threshold: bool = False


def findings_of(record: Record) -> RunFindings | None:
    """Per defect type and per region findings of a run (None: it saved no predictions)."""
    predictions = predictions_of(record)
    if not predictions:
        return None
    findings = RunFindings(record, label_of_run(record))
    for category, members in predictions.items():
        image_threshold, pixel_threshold = thresholds(record, category)
        findings.types += defect_type_results(members, image_threshold)
        findings.regions += region_results(members, pixel_threshold)
        findings.has_pixel_threshold |= pixel_threshold is not None
    return findings


@dataclass
class Drop:
    """A corrupted run against its clean twin (percentage points; positive = worse under the corruption)."""

    label: str
    corruption: str
    strength: int
    clean: Record
    corrupted: Record
    image_drop: float | None
    pixel_drop: float | None


def robustness(records: Sequence[Record]) -> list[Drop]:
    """Every corrupted run paired with the clean run of the same configuration."""
    clean = {clean_key(r): r for r in records if corruption_of(r) is None}
    drops = []
    for record in records:
        which = corruption_of(record)
        twin = clean.get(clean_key(record)) if which else None
        if twin is None or which is None:
            continue

        def drop(metric: str, twin: Record = twin, record: Record = record) -> float | None:
            before, after = twin.metric(metric), record.metric(metric)
            return None if before is None or after is None else before - after

        drops.append(
            Drop(label_of_run(record), *which, twin, record, drop("image_auroc"), drop("pixel_auroc"))
        )
    return sorted(
        drops,
        key=lambda d: (
            d.label,
            CORRUPTIONS.index(d.corruption) if d.corruption in CORRUPTIONS else 99,
            d.strength,
        ),
    )


def weaknesses(findings: Sequence[RunFindings], drops: Sequence[Drop]) -> dict[str, list[str]]:
    """Per method its known weaknesses, each stated with the figure that shows it."""
    found: dict[str, list[str]] = defaultdict(list)
    for run in findings:
        method = str(run.record.value("method"))
        bins = [b for b in size_bins(run.regions) if b.recall is not None and b.regions >= MIN_REGIONS]
        weak = [b for b in bins if b.recall < RECALL_LIMIT]
        if weak:
            worst = min(weak, key=lambda b: b.recall)
            found[method].append(
                f"misses defects of {worst.label} of the image: region recall {worst.recall:.2f} "
                f"({worst.regions} regions)"
            )
        overall = run.record.metric("image_auroc")
        typed = [t for t in run.types if t.image_auroc is not None]
        if typed and overall is not None:
            worst_type = min(typed, key=lambda t: t.image_auroc)
            if worst_type.image_auroc < overall - AUROC_GAP:
                found[method].append(
                    f"weak on '{worst_type.defect_type}' ({worst_type.category}): image AUROC "
                    f"{worst_type.image_auroc:.1f} vs {overall:.1f} overall"
                )
    by_label: dict[str, list[Drop]] = defaultdict(list)
    for item in drops:
        if item.image_drop is not None:
            by_label[str(item.clean.value("method"))].append(item)
    for label, items in by_label.items():
        worst_drop = max(items, key=lambda d: d.image_drop or 0.0)
        if (worst_drop.image_drop or 0.0) >= DROP_LIMIT:
            found[label].append(
                f"{worst_drop.corruption} at strength {worst_drop.strength} costs "
                f"{worst_drop.image_drop:.1f} image AUROC points"
            )
    return dict(found)


# ----- figures and tables --------------------------------------------------------------------------------
def _grouped_bars(
    series: dict[str, dict[str, tuple[float, list[str]]]],
    groups: Sequence[str],
    *,
    y_label: str,
    title: str,
    metric: str,
    target: Path,
) -> FigureOutput | None:
    """Bars per group (x) and series (colour); each value with the results.json files behind it."""
    if not series or not groups:
        return None
    provenance = Provenance(title)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 2), 3.6))
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(sorted(series.items())):
        xs, ys = [], []
        for position, group in enumerate(groups):
            if group in values:
                value, sources = values[group]
                xs.append(position + index * width - 0.4 + width / 2)
                ys.append(value)
                provenance.add(
                    series=name, x=group, metric=metric, mean=value, n=len(sources), sources=sources
                )
        axis.bar(xs, ys, width=width, label=name)
    axis.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    axis.set_ylabel(y_label)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, target, provenance, ["method"])


def type_section(findings: Sequence[RunFindings], out: Path) -> tuple[list[FigureOutput], list[Table]]:
    """Figure (mean over categories per defect type) and table (per category) of the defect types."""
    rows, sources = [], []
    series: dict[str, dict[str, tuple[float, list[str]]]] = {}
    for run in findings:
        per_type: dict[str, list[float]] = defaultdict(list)
        for item in run.types:
            rows.append(
                [
                    run.label,
                    str(run.record.value("dataset")),
                    item.category,
                    item.defect_type,
                    str(item.images),
                    "—" if item.image_auroc is None else f"{item.image_auroc:.1f}",
                    "—" if item.recall is None else f"{item.recall:.2f}",
                ]
            )
            sources.append([run.record.source])
            if item.image_auroc is not None:
                per_type[item.defect_type].append(item.image_auroc)
        series[run.label] = {
            kind: (statistics.fmean(values), [run.record.source]) for kind, values in per_type.items()
        }
    groups = sorted({kind for values in series.values() for kind in values})
    figure = _grouped_bars(
        series,
        groups,
        y_label="image AUROC (%) vs normal images",
        title="Defect types: image AUROC of each type's images (mean over the categories holding it)",
        metric="image_auroc",
        target=out / "figures" / "limitations_defect_types.png",
    )
    table = write_rows(
        "Defect types: per category, image AUROC against its normal images and recall at the image threshold",
        ["method", "test data", "category", "defect type", "images", "I-AUROC (%)", "recall @ threshold"],
        rows,
        sources,
        out / "limitations_defect_types",
    )
    return [f for f in (figure,) if f], [t for t in (table,) if t]


def size_section(findings: Sequence[RunFindings], out: Path) -> tuple[list[FigureOutput], list[Table]]:
    """Region recall and overlap per size bin and method."""
    rows, sources = [], []
    series: dict[str, dict[str, tuple[float, list[str]]]] = {}
    for run in findings:
        bins = size_bins(run.regions)
        for item in bins:
            rows.append(
                [
                    run.label,
                    str(run.record.value("dataset")),
                    item.label,
                    str(item.regions),
                    "—" if item.recall is None else f"{item.recall:.2f}",
                    "—" if item.overlap is None else f"{item.overlap:.2f}",
                ]
            )
            sources.append([run.record.source])
        series[run.label] = {
            item.label: (100.0 * item.recall, [run.record.source]) for item in bins if item.recall is not None
        }
    present = {label for values in series.values() for label in values}
    groups = [label for _, _, label in SIZE_BINS if label in present]
    figure = _grouped_bars(
        series,
        groups,
        y_label=f"regions found (%), ≥ {REGION_FOUND:.0%} of pixels above threshold",
        title="Defect size: region-level recall at the pixel threshold, per region area (share of the image)",
        metric="region_recall",
        target=out / "figures" / "limitations_sizes.png",
    )
    table = write_rows(
        f"Defect size: ground-truth regions per area bin, the share found (≥ {REGION_FOUND:.0%} of the "
        "region above the run's pixel threshold) and the mean per-region overlap",
        ["method", "test data", "region area", "regions", "region recall", "mean overlap"],
        rows,
        sources,
        out / "limitations_sizes",
    )
    return [f for f in (figure,) if f], [t for t in (table,) if t]


def category_section(records: Sequence[Record], out: Path) -> tuple[list[FigureOutput], list[Table]]:
    """Categories ranked by image AUROC per method (hardest first), textures against objects."""
    rows, sources = [], []
    series: dict[str, dict[str, tuple[float, list[str]]]] = {}
    for record in sorted(records, key=label_of_run):
        per_category = (record.run.get("metrics") or {}).get("per_category") or {}
        dataset = str(record.value("dataset"))
        ranked = sorted(
            ((c, m.get("image_auroc")) for c, m in per_category.items() if m.get("image_auroc") is not None),
            key=lambda item: item[1],
        )
        kinds: dict[str, list[float]] = defaultdict(list)
        for rank, (category, value) in enumerate(ranked, start=1):
            pixel = per_category[category].get("pixel_auroc")
            kind = kind_of(category, dataset)
            kinds[kind].append(100.0 * value)
            rows.append(
                [
                    label_of_run(record),
                    dataset,
                    str(rank),
                    category,
                    kind,
                    f"{100.0 * value:.1f}",
                    "—" if pixel is None else f"{100.0 * pixel:.1f}",
                ]
            )
            sources.append([record.source])
        series[label_of_run(record)] = {
            kind: (statistics.fmean(values), [record.source]) for kind, values in kinds.items()
        }
    figure = _grouped_bars(
        series,
        [kind for kind in ("object", "texture") if any(kind in v for v in series.values())],
        y_label="image AUROC (%), mean over categories",
        title="Categories: objects against textures",
        metric="image_auroc",
        target=out / "figures" / "limitations_categories.png",
    )
    table = write_rows(
        "Categories ranked by image AUROC per method (rank 1 = hardest)",
        ["method", "test data", "rank", "category", "kind", "I-AUROC (%)", "P-AUROC (%)"],
        rows,
        sources,
        out / "limitations_categories",
    )
    return [f for f in (figure,) if f], [t for t in (table,) if t]


def robustness_section(drops: Sequence[Drop], out: Path) -> tuple[list[FigureOutput], list[Table]]:
    """One panel per corruption: image AUROC drop against strength, a line per method."""
    if not drops:
        return [], []
    kinds = [kind for kind in CORRUPTIONS if any(d.corruption == kind for d in drops)]
    title = "Corruptions: image AUROC drop against clean images (points), per corruption and strength"
    provenance = Provenance(title)
    figure, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds) + 1.5, 3.2), squeeze=False)
    labels = sorted({d.label for d in drops})
    for axis, kind in zip(axes[0], kinds, strict=True):
        for label in labels:
            points = [(0, 0.0, [])] + [
                (d.strength, d.image_drop, [d.clean.source, d.corrupted.source])
                for d in drops
                if d.corruption == kind and d.label == label and d.image_drop is not None
            ]
            if len(points) == 1:
                continue
            points.sort(key=lambda p: p[0])
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            for strength, value, sources in points[1:]:
                provenance.add(
                    series=label,
                    x=f"{kind}@{strength}",
                    metric="image_auroc_drop",
                    mean=value,
                    n=1,
                    sources=sources,
                )
        axis.axhline(0.0, color="black", linewidth=0.5)
        axis.set_title(kind, fontsize=9)
        axis.set_xticks([0, 1, 2, 3])
        axis.set_xlabel("strength (0 = clean)")
    axes[0][0].set_ylabel("image AUROC drop (points)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.suptitle(title, fontsize=9)
    written = _save(
        figure, out / "figures" / "limitations_corruptions.png", provenance, ["method", *CORRUPTION_KEYS]
    )
    rows = [
        [
            d.label,
            d.corruption,
            str(d.strength),
            f"{d.clean.metric('image_auroc'):.1f}" if d.clean.metric("image_auroc") is not None else "—",
            f"{d.corrupted.metric('image_auroc'):.1f}"
            if d.corrupted.metric("image_auroc") is not None
            else "—",
            "—" if d.image_drop is None else f"{d.image_drop:+.1f}",
            "—" if d.pixel_drop is None else f"{d.pixel_drop:+.1f}",
        ]
        for d in drops
    ]
    table = write_rows(
        "Corruptions: AUROC drop per corruption and strength (clean minus corrupted, points)",
        [
            "method",
            "corruption",
            "strength",
            "clean I-AUROC",
            "corrupted I-AUROC",
            "I-AUROC drop",
            "P-AUROC drop",
        ],
        rows,
        [[d.clean.source, d.corrupted.source] for d in drops],
        out / "limitations_corruptions",
    )
    return [written], [t for t in (table,) if t]


# ----- gallery ---------------------------------------------------------------------------------------------
#: Images per side of a gallery row (lowest-scored anomalous, highest-scored normal).
GALLERY_K = 3
TILE = 160


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_EIGHT, border_value=0)


def gallery_tile(
    image_path: str,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None,
    caption: str,
    limits: tuple[float, float],
) -> Image.Image:
    """One image: the heatmap blended on it (colours fixed over the category), the mask outlined in green,
    and a caption (score and threshold). A missing image file leaves the heatmap alone."""
    height, width = anomaly_map.shape
    try:
        with Image.open(image_path) as source:
            base = np.asarray(source.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))
    except OSError:
        base = np.full((height, width, 3), 128, np.uint8)
    heat = colorize(anomaly_map, *limits)
    blended = (0.5 * heat + 0.5 * base).astype(np.uint8)
    if mask is not None:
        blended[_outline(mask.astype(bool))] = (0, 255, 0)
    tile = Image.fromarray(blended).resize((TILE, TILE), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE + 26), "white")
    canvas.paste(tile, (0, 26))
    draw = ImageDraw.Draw(canvas)
    for line, text in enumerate(caption.split("\n")[:2]):
        draw.text((2, 1 + 12 * line), text, fill="black")
    return canvas


def gallery_figures(findings: Sequence[RunFindings], out: Path, k: int = GALLERY_K) -> list[FigureOutput]:
    """Per method and category: the k lowest-scored anomalous images (top row) and the k highest-scored
    normal images (bottom row), each with heatmap, mask outline, score and the image threshold."""
    figures = []
    for run in findings:
        for category, predictions in sorted(predictions_of(run.record).items()):
            maps = predictions.maps()
            if maps is None:
                continue
            masks = predictions.masks()
            image_threshold, _ = thresholds(run.record, category)
            anomalous = [i for i in np.argsort(predictions.scores) if predictions.labels[i] == 1][:k]
            normal = [i for i in np.argsort(-predictions.scores) if predictions.labels[i] == 0][:k]
            if not anomalous and not normal:
                continue
            chosen = [*anomalous, *normal]
            values = np.concatenate([maps[predictions.keys[i]].ravel() for i in chosen])
            limits = (float(values.min()), float(values.max()))
            threshold_text = "—" if image_threshold is None else f"{image_threshold:.3g}"
            title = (
                f"Gallery: {run.label}, {category}: top, the {len(anomalous)} lowest-scored anomalous "
                f"images; bottom, the {len(normal)} highest-scored normal images (green: mask outline)"
            )
            provenance = Provenance(title)
            rows = []
            for row in (anomalous, normal):
                tiles = []
                for index in row:
                    key = predictions.keys[index]
                    score = float(predictions.scores[index])
                    mask = masks[key] if masks is not None and key in masks.files else None
                    kind = predictions.defect_types[index]
                    tiles.append(
                        gallery_tile(
                            predictions.paths[index],
                            maps[key],
                            mask,
                            f"{kind} {Path(key).name}\nscore {score:.3g} / thr {threshold_text}",
                            limits,
                        )
                    )
                    provenance.add(
                        series=f"{run.label}/{category}",
                        x=key,
                        metric=f"image score (threshold {threshold_text})",
                        mean=score,
                        n=1,
                        sources=[run.record.source],
                    )
                rows.append(tiles)
            columns = max(len(r) for r in rows)
            sheet = Image.new("RGB", (columns * (TILE + 4), 2 * (TILE + 30)), "white")
            for row_index, tiles in enumerate(rows):
                for column, tile in enumerate(tiles):
                    sheet.paste(tile, (column * (TILE + 4), row_index * (TILE + 30)))
            stem = "".join(c if c.isalnum() else "_" for c in f"{run.label}_{category}")
            target = out / "gallery" / f"{stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            sheet.save(target)
            meta = target.with_suffix(".json")
            meta.write_text(
                json.dumps({"title": title, "dimensions": ["method"], "points": provenance.points}, indent=1)
            )
            figures.append(FigureOutput(target, meta, title, ["method"]))
    return figures
