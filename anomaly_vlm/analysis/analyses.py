"""The paper's analyses: what each sweeps (per scale) and the tables and figures it draws from the results.

Two scales: ``tiny`` runs offline on a CPU in minutes (the tiny random CLIP, the synthetic dataset, short
training), ``published`` is the published setting of every method (its experiment file: weights, input
size, MVTec AD / VisA under ``DATA_ROOT``). Everything but the sweeps is the same at both scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_vlm.analysis.alignment import (
    attribution,
    attribution_table,
    grid_figure,
    grid_rows,
    grid_table,
)
from anomaly_vlm.analysis.figures import (
    FigureOutput,
    bar_figure,
    heatmap_figure,
    line_figure,
    pareto_figure,
)
from anomaly_vlm.analysis.limitations import (
    category_section,
    corruption_of,
    findings_of,
    gallery_figures,
    robustness,
    robustness_section,
    size_section,
    type_section,
    weaknesses,
)
from anomaly_vlm.analysis.records import Record, dump, format_value, load_records
from anomaly_vlm.analysis.sweeps import Sweep
from anomaly_vlm.analysis.tables import Table, write_rows, write_table
from anomaly_vlm.data.corruptions import CORRUPTIONS
from anomaly_vlm.methods.alignment.torch_model import PUBLISHED_ALIGNMENT, STRATEGIES
from anomaly_vlm.methods.catalog import MethodInfo, method_info, method_names
from anomaly_vlm.reporting.runs import load_published, published_value

SCALES = ("tiny", "published")
IMAGE_METRICS = ("image_auroc", "image_ap")
PIXEL_METRICS = ("pixel_auroc", "pixel_aupro")
MAIN_METRICS = ("image_auroc", "pixel_auroc")
OFFLINE = {"HF_HUB_OFFLINE": "1"}

#: Tiny scale: one synthetic object is the test set of every method, so all methods are compared on the
#: same images; the trained methods learn on the three textures (their test splits, as in the
#: cross-dataset protocol). One training epoch: these runs prove the analysis, not the methods.
TINY_TEST = "data.categories=[disc]"
TINY_TRAIN = "train_data.categories=[brick,grass,gravel]"
TINY_COMMON = ("logger=none", "num_overlays=0", "datamodule.num_workers=0", TINY_TEST)

#: Tiny training epochs of a method for which one epoch is no schedule: AA-CLIP trains its text adapters for
#: ``method.text_epochs`` (1 in its synthetic experiment), then its image adapters, so it needs one of each.
TINY_EPOCHS = {"aaclip": 2}

#: Vision blocks of the backbones the methods use at each scale (tiny: 8; ViT-L-14-336: 24).
DEPTH = {"tiny": 8, "published": 24}


#: Zero-shot jobs: the reference draw is pinned, so a method that sweeps its draws by default (APRIL-GAN)
#: runs one job, not one per draw.
ZERO_SHOT = ("shots=0", "reference_seed=0")


def setup(method: str, scale: str) -> tuple[str, ...]:
    """The overrides of a method's standard setting at a scale, from its catalog entry.

    Tiny: its ``<method>_synthetic`` experiment (else the demo's data with ``method=<method>``), one epoch
    (:data:`TINY_EPOCHS` where that is no schedule) on three synthetic categories when it trains.
    Published: its ``<method>_mvtec`` experiment (else MVTec AD with the method's defaults).
    """
    info = method_info(method)
    if scale == "tiny":
        if f"{method}_synthetic" in info.experiments:
            base: tuple[str, ...] = (f"experiment={method}_synthetic",)
        else:
            base = ("experiment=demo", f"method={method}")
        if info.trains:
            base = (*base, f"trainer.max_epochs={TINY_EPOCHS.get(method, 1)}", TINY_TRAIN)
        return (*base, *TINY_COMMON)
    if f"{method}_mvtec" in info.experiments:
        return (f"experiment={method}_mvtec",)
    return (f"method={method}", "data=mvtec")


#: Configurations that are not methods of their own (the alignment analysis's controlled strategies): the
#: per-method analyses and the selection table leave them out.
NOT_METHODS = ("alignment",)


def methods_where(keep: Callable[[MethodInfo], bool]) -> tuple[str, ...]:
    """The methods whose catalog entry passes ``keep``, by name (not :data:`NOT_METHODS`)."""
    return tuple(name for name in method_names() if name not in NOT_METHODS and keep(method_info(name)))


def sweep_list(values: Sequence[object]) -> str:
    """A Hydra sweep over values (lists written ``[a,b]``, None as ``null``)."""

    def one(value: object) -> str:
        if value is None:
            return "null"
        if isinstance(value, list | tuple):
            return "[" + ",".join(str(item) for item in value) + "]"
        return str(value)

    return ",".join(one(value) for value in values)


@dataclass
class Section:
    """What an analysis adds to the report: its figures, tables and notes."""

    name: str
    title: str
    description: str
    figures: list[FigureOutput] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    #: Per method, what it is known to miss (the limitations analysis): the selection table shows them.
    weaknesses: dict[str, list[str]] = field(default_factory=dict)


class Analysis:
    """An analysis: its sweeps at a scale and how its results become tables and figures."""

    name = ""
    title = ""
    description = ""

    def sweeps(self, scale: str) -> list[Sweep]:
        raise NotImplementedError

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        raise NotImplementedError

    def parts(self, scale: str) -> list[str]:
        return [sweep.part for sweep in self.sweeps(scale)]

    def borrowed_records(self, own: list[Record], scale: str, output_root: str | Path) -> list[Record]:
        """Results of other analyses' sweeps this analysis also reads (none by default)."""
        return []

    def section(self) -> Section:
        return Section(self.name, self.title, self.description)


def _env(scale: str) -> dict[str, str]:
    return dict(OFFLINE) if scale == "tiny" else {}


# ----- layers ----------------------------------------------------------------------------------------------
#: Per multi-layer method (its class names a ``tap_option``): the config key of its tap blocks.
TAP_KEYS = {name: f"method.{method_info(name).tap_option}" for name in methods_where(lambda m: m.tap_option)}


def layer_blocks(scale: str) -> list[int]:
    """Single blocks swept: every second block of the tiny backbone (its scaled taps 2/4/6/8), every third
    of ViT-L (3 ... 24, with the published 6/12/18/24)."""
    step = 2 if scale == "tiny" else 3
    return list(range(step, DEPTH[scale] + 1, step))


class LayersAnalysis(Analysis):
    name = "layers"
    title = "Feature extraction: which blocks"
    description = (
        "Each single tap block against the published combination, zero-shot, for the multi-layer methods "
        "(APRIL-GAN's projected stages, AnomalyCLIP's DPAM patch embeddings, MuSc's aggregated patch "
        "tokens). The published combination is a dashed line of the method's colour (APRIL-GAN, MuSc: "
        "blocks 6/12/18/24 scaled to the depth); AnomalyCLIP's published setting is the last block alone, "
        "so it is the last point of its line. WinCLIP is not included: its window embeddings need the "
        "whole transformer, and its few-shot patch branch reads the last block only (no block option)."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        blocks = [[block] for block in layer_blocks(scale)]
        sweeps = []
        for method, key in TAP_KEYS.items():
            # The published combination: the default blocks (null), or the last block alone (a point of
            # the single-block line already).
            combination = [] if method_info(method).published_taps == "last" else [None]
            sweeps.append(
                Sweep(
                    f"layers-{method}",
                    (*setup(method, scale), *ZERO_SHOT, f"{key}={sweep_list([*blocks, *combination])}"),
                    _env(scale),
                )
            )
        return sweeps

    @staticmethod
    def taps(record: Record) -> list[int] | None:
        return record.value(TAP_KEYS.get(str(record.value("method")), "method.layers"))

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        records = [r for r in records if r.value("method") in TAP_KEYS]

        def block_of(record: Record) -> float | None:
            taps = self.taps(record)
            return float(taps[0]) if taps and len(taps) == 1 else None

        def is_combination(record: Record) -> bool:
            taps = self.taps(record)
            return taps is None or len(taps) > 1

        for metrics, kind in ((IMAGE_METRICS, "image"), (PIXEL_METRICS, "pixel")):
            figure = line_figure(
                records,
                x="tap",
                x_of=block_of,
                x_keys=sorted(set(TAP_KEYS.values())),
                x_label="tap block (single)",
                reference_label="published combination (method default)",
                metrics=metrics,
                legend=["method"],
                title=f"Layers: {kind} metrics vs tap block (one line per method)",
                target=out / "figures" / f"layers_{kind}.png",
                reference_line=is_combination,
            )
            if figure:
                section.figures.append(figure)
        table = write_table(
            records,
            keys=["method", "method.stages", "method.layers"],
            metrics=[*IMAGE_METRICS, *PIXEL_METRICS],
            title="Layers: metrics per tap block",
            stem=out / "layers",
            sort_key=lambda r: (str(r.value("method")), block_of(r) or 1e9),
        )
        if table:
            section.tables.append(table)
        section.records = records
        return section


# ----- shots ------------------------------------------------------------------------------------------------
SHOT_METHODS = methods_where(lambda m: m.few_shot)
FEW_SHOT_ONLY = methods_where(lambda m: not m.zero_shot)
SHOTS = (1, 2, 4, 8)
#: Reference draws per few-shot setting (tiny: two, enough for a spread band on a CPU).
DRAWS = {"tiny": (0, 1), "published": (0, 1, 2)}
#: Tiny: a synthetic category has 8 normal training images, too few for the disjoint name-sorted slices of
#: AnomalyDINO's experiments at 8 shots and a second draw (images 8..15), so there it draws as every other
#: method does (seeded, without replacement); the published scale keeps its slices.
TINY_DRAW = {"anomalydino": ("datamodule.reference_draw=random",)}


class ShotsAnalysis(Analysis):
    name = "shots"
    title = "Zero- vs few-shot"
    description = (
        "0/1/2/4/8 normal reference images for the few-shot methods, over three reference draws "
        "(reference_seed 0, 1, 2): the line is the mean, the band ± one standard deviation over the draws. "
        "Crosses are the published numbers for the same method, dataset and shots (published.json); a "
        "dataset without published numbers (the synthetic one) has none."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        sweeps = []
        for method in SHOT_METHODS:
            base = (*setup(method, scale), *(TINY_DRAW.get(method, ()) if scale == "tiny" else ()))
            if method not in FEW_SHOT_ONLY:
                sweeps.append(Sweep(f"shots-{method}-zero", (*base, *ZERO_SHOT), _env(scale)))
            sweeps.append(
                Sweep(
                    f"shots-{method}",
                    (*base, f"shots={sweep_list(SHOTS)}", f"reference_seed={sweep_list(DRAWS[scale])}"),
                    _env(scale),
                )
            )
        return sweeps

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        published = load_published()

        def paper(record: Record, metric: str) -> list[tuple[float, float]]:
            points = []
            for shots in (0, *SHOTS):
                value, _ = published_value(
                    published, str(record.value("method")), str(record.value("dataset")), shots, metric
                )
                if value is not None:
                    points.append((float(shots), value))
            return points

        metrics = (*MAIN_METRICS, "pixel_aupro")
        figure = line_figure(
            records,
            x="shots",
            metrics=metrics,
            legend=["method"],
            title="Shots: metric vs normal reference images",
            target=out / "figures" / "shots.png",
            published=paper,
            replicate="reference draws",
        )
        if figure:
            section.figures.append(figure)
            if not any("published" in point for point in _points(figure)):
                section.notes.append(
                    f"No published numbers exist for dataset "
                    f"{sorted({str(r.value('dataset')) for r in records})}: no crosses drawn."
                )
        table = write_table(
            records,
            keys=["method", "shots"],
            metrics=[*IMAGE_METRICS, *PIXEL_METRICS],
            title="Shots: metrics per method and shots (over reference draws)",
            stem=out / "shots",
            sort_key=lambda r: (str(r.value("method")), int(r.value("shots") or 0)),
        )
        if table:
            section.tables.append(table)
        section.records = records
        return section


def _points(figure: FigureOutput) -> list[dict]:
    import json

    return json.loads(figure.provenance.read_text())["points"]


# ----- resolution and efficiency ----------------------------------------------------------------------
RESOLUTION_METHODS = ("clip", "winclip", "aprillab", "musc")
#: Input sizes per scale and patch size: multiples of the patch (16 px for ViT-B-16 models, 14 px for
#: ViT-L-14) around the published 240 / 336 / 448 / 518.
SIZES = {
    "tiny": {16: (64, 96, 128)},
    "published": {16: (240, 336, 448, 512), 14: (224, 336, 448, 518)},
}
#: Latency is measured on the model, so no job reads features from the cache.
UNCACHED = "feature_cache.enabled=false"


def sizes_for(method: str, scale: str) -> tuple[int, ...]:
    table = SIZES[scale]
    return table.get(method_info(method).patch_size, next(iter(table.values())))


class ResolutionAnalysis(Analysis):
    name = "resolution"
    title = "Input size: accuracy and latency"
    description = (
        "Input sizes (the positional embedding interpolated to each) against accuracy and latency per "
        "method, zero-shot. Latency is the median ms/image after warm-up of the efficiency probe, measured "
        "without the feature cache. Trained methods are trained at each size."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        return [
            Sweep(
                f"resolution-{method}",
                (
                    *setup(method, scale),
                    *ZERO_SHOT,
                    UNCACHED,
                    f"backbone.image_size={sweep_list(sizes_for(method, scale))}",
                ),
                _env(scale),
            )
            for method in RESOLUTION_METHODS
        ]

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        figure = line_figure(
            records,
            x="backbone.image_size",
            metrics=(*MAIN_METRICS, "ms_per_image"),
            legend=["method"],
            title="Resolution: accuracy and latency vs input size",
            target=out / "figures" / "resolution.png",
            x_of=lambda r: r.value("backbone.image_size"),
        )
        if figure:
            section.figures.append(figure)
        table = write_table(
            records,
            keys=["method", "backbone.image_size"],
            metrics=MAIN_METRICS,
            title="Resolution: accuracy and cost per input size",
            stem=out / "resolution",
            efficiency=True,
            sort_key=lambda r: (str(r.value("method")), int(r.value("backbone.image_size") or 0)),
        )
        if table:
            section.tables.append(table)
        section.records = records
        return section


#: Every method the resolution sweeps leave out, at its own size.
EFFICIENCY_METHODS = methods_where(lambda m: m.name not in RESOLUTION_METHODS)
#: Published scale: the training-free baselines on other backbones too (each at its native size).
BACKBONES = ("vit_b16", "vit_b16_plus_240", "vit_l14_336")
#: Published scale: AnomalyDINO (1-shot, its standard setting) on the DINOv2 sizes, the vision-only rows.
DINOV2_BACKBONES = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14")


class EfficiencyAnalysis(Analysis):
    name = "efficiency"
    title = "Computational efficiency"
    description = (
        "Accuracy against latency, FLOPs, parameters and peak memory of every method, backbone and input "
        "size (the resolution sweeps plus the remaining methods at their own size); the black step line is "
        "the Pareto front (no configuration is both cheaper and more accurate). Measured without the "
        "feature cache; GPU memory is empty on a CPU, so CPU peak memory is drawn there."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        sweeps = ResolutionAnalysis().sweeps(scale)
        for method in EFFICIENCY_METHODS:
            shots = ("shots=1", "reference_seed=0") if method in FEW_SHOT_ONLY else ZERO_SHOT
            sweeps.append(
                Sweep(f"efficiency-{method}", (*setup(method, scale), *shots, UNCACHED), _env(scale))
            )
        if scale == "published":
            for method in ("clip", "winclip"):
                sweeps.append(
                    Sweep(
                        f"efficiency-{method}-backbones",
                        (*setup(method, scale), *ZERO_SHOT, UNCACHED, f"backbone={sweep_list(BACKBONES)}"),
                        _env(scale),
                    )
                )
            sweeps.append(
                Sweep(
                    "efficiency-anomalydino-backbones",
                    (
                        *setup("anomalydino", scale),
                        "shots=1",
                        "reference_seed=0",
                        UNCACHED,
                        f"backbone={sweep_list(DINOV2_BACKBONES)}",
                    ),
                    _env(scale),
                )
            )
        return sweeps

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        memory = (
            "peak_gpu_memory_mb"
            if any(r.efficiency("peak_gpu_memory_mb") for r in records)
            else "peak_cpu_memory_mb"
        )
        costs = ("ms_per_image", "flops_per_image", "total_parameters", memory)
        for metric in MAIN_METRICS:
            figure = pareto_figure(
                records,
                costs=costs,
                metric=metric,
                legend=["method", "backbone", "backbone.image_size"],
                title=f"Efficiency: {metric.replace('_', ' ')} vs cost, Pareto front",
                target=out / "figures" / f"efficiency_{metric}.png",
            )
            if figure:
                section.figures.append(figure)
        table = write_table(
            records,
            keys=["method", "backbone", "backbone.image_size", "shots"],
            metrics=MAIN_METRICS,
            title="Efficiency: accuracy and cost per configuration",
            stem=out / "efficiency",
            efficiency=True,
            sort_key=lambda r: (
                str(r.value("method")),
                str(r.value("backbone")),
                r.value("backbone.image_size") or 0,
            ),
        )
        if table:
            section.tables.append(table)
        section.records = records
        return section


# ----- prompts ----------------------------------------------------------------------------------------------
#: Prompt ablations (``prompts.ablation``) per zero-shot method with a hand-written prompt set. The CLIP
#: baseline's set has one state pair and one template, so only the class-name ablation changes it.
ABLATIONS = ("full", "states_only", "templates_only", "one_pair", "object_name")
PROMPT_METHODS = {"clip": ("full", "object_name"), "winclip": ABLATIONS, "aprillab": ABLATIONS}
#: The other text aggregation than each method's published one.
#: Each method's published text aggregation (``method.text_aggregation`` of conf/method/<name>.yaml): its
#: ablation bars use it; both aggregations are swept with every ablation (one sweep per method).
PUBLISHED_AGGREGATION = {"winclip": "raw_mean", "aprillab": "normalized_mean"}
AGGREGATIONS = ("normalized_mean", "raw_mean")
#: Methods whose text side is learned rather than written: one "learned prompts" bar each.
LEARNED_METHODS = ("anomalyclip", "faprompt", "bayespfl")
CONDITION_LABELS = {
    "full": "full ensemble",
    "states_only": "states only",
    "templates_only": "templates only",
    "one_pair": "one state pair",
    "object_name": "generic 'object'",
    "normalized_mean": "normalised mean",
    "raw_mean": "raw mean",
    "learned": "learned prompts",
}


class PromptsAnalysis(Analysis):
    name = "prompts"
    title = "Prompt engineering"
    description = (
        "Prompt ablations generated from each method's prompt set by prompts.ablation: the full ensemble "
        "(states × templates), states only (one template), templates only (one state pair), one state pair "
        "with one template, the class name replaced by the generic word 'object'; the text aggregation "
        "(normalised vs raw mean of the sentence embeddings, swept with every ablation; the figure shows "
        "it for the full ensemble, the table for all); and learned prompts (AnomalyCLIP, FAPrompt's "
        "compound prompts, Bayes-PFL's prompt distributions). Zero-shot. The "
        "ablation bars use each method's published aggregation, so its full-ensemble bar also stands under "
        "that aggregation."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        sweeps = []
        for method, ablations in PROMPT_METHODS.items():
            overrides = [*setup(method, scale), *ZERO_SHOT, f"prompts.ablation={sweep_list(ablations)}"]
            if method in PUBLISHED_AGGREGATION:
                # One launch per method: starting train.py costs more than the few extra jobs.
                overrides.append(f"method.text_aggregation={sweep_list(AGGREGATIONS)}")
            sweeps.append(Sweep(f"prompts-{method}", tuple(overrides), _env(scale)))
        for method in LEARNED_METHODS:
            sweeps.append(Sweep(f"prompts-{method}", (*setup(method, scale), *ZERO_SHOT), _env(scale)))
        return sweeps

    @staticmethod
    def conditions(record: Record) -> list[str]:
        """The bars a record stands in: its ablation (at the method's published aggregation), and for the
        full ensemble its aggregation; none for an ablation at the other aggregation (table only)."""
        method = record.value("method")
        if method in LEARNED_METHODS:
            return [CONDITION_LABELS["learned"]]
        ablation = record.value("prompts.ablation") or "full"
        aggregation = record.value("method.text_aggregation")
        labels = []
        if aggregation is None or aggregation == PUBLISHED_AGGREGATION.get(str(method)):
            labels.append(CONDITION_LABELS.get(ablation, ablation))
        if ablation == "full" and aggregation:
            labels.append(CONDITION_LABELS.get(aggregation, str(aggregation)))
        return labels

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        order = [CONDITION_LABELS[key] for key in (*ABLATIONS, "normalized_mean", "raw_mean", "learned")]
        present = {label for r in records for label in self.conditions(r)}
        figure = bar_figure(
            records,
            categories_of=self.conditions,
            categories=[label for label in order if label in present],
            category_keys=["prompts.ablation", "method.text_aggregation", "prompts"],
            metrics=MAIN_METRICS,
            legend=["method"],
            title="Prompts: ablations of the prompt set, grouped by method",
            target=out / "figures" / "prompts.png",
        )
        if figure:
            section.figures.append(figure)
        table = write_table(
            records,
            keys=["method", "prompts", "prompts.ablation", "method.text_aggregation"],
            metrics=[*IMAGE_METRICS, *PIXEL_METRICS],
            title="Prompts: metrics per prompt ablation",
            stem=out / "prompts",
            sort_key=lambda r: (
                str(r.value("method")),
                str(r.value("prompts.ablation")),
                str(r.value("method.text_aggregation")),
            ),
        )
        if table:
            section.tables.append(table)
        section.records = records
        return section


# ----- cross-domain ---------------------------------------------------------------------------------------
CROSS_METHODS = methods_where(lambda m: m.trains)
#: The suite: tiny = synthetic categories as domains (a texture and an object); published = datasets.
DOMAINS = {"tiny": ("brick", "nut"), "published": ("mvtec", "visa", "mpdd", "btad")}


def domain_of(record: Record, side: str) -> str:
    """``train`` or ``test`` domain: the category list where one is set (synthetic domains), else the
    dataset name."""
    group = "train_data" if side == "train" else "data"
    categories = record.value(f"{group}.categories")
    dataset = record.value("train_dataset" if side == "train" else "dataset")
    return format_value(categories) if categories else str(dataset)


class CrossDomainAnalysis(Analysis):
    name = "crossdomain"
    title = "Cross-domain generalisation"
    description = (
        "The trained zero-shot methods trained on each domain of the suite (its test split with masks, as "
        "in the cross-dataset protocol) and tested on each: one matrix per method and metric. The diagonal "
        "(outlined) tests on the data it trained on, so it is an upper bound, not a zero-shot number."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        domains = DOMAINS[scale]
        sweeps = []
        for method in CROSS_METHODS:
            if scale == "tiny":
                base = [
                    o
                    for o in setup(method, scale)
                    if not o.startswith(("data.categories", "train_data.categories"))
                ]
                grid = (
                    f"train_data.categories={sweep_list([[d] for d in domains])}",
                    f"data.categories={sweep_list([[d] for d in domains])}",
                )
            else:
                base = list(setup(method, scale))
                grid = (f"train_data={sweep_list(domains)}", f"data={sweep_list(domains)}")
            sweeps.append(Sweep(f"crossdomain-{method}", (*base, *ZERO_SHOT, *grid), _env(scale)))
        return sweeps

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        records = [r for r in records if r.value("train_dataset")]
        for metric in MAIN_METRICS:
            figure = heatmap_figure(
                records,
                row_of=lambda r: domain_of(r, "train"),
                column_of=lambda r: domain_of(r, "test"),
                row_label="trained on",
                column_label="tested on",
                metric=metric,
                panel_keys=["method"],
                title="Cross-domain: train on each domain, test on each",
                target=out / "figures" / f"crossdomain_{metric}.png",
            )
            if figure:
                section.figures.append(figure)
        table = write_table(
            records,
            keys=["method", "train_dataset", "train_data.categories", "dataset", "data.categories"],
            metrics=[*IMAGE_METRICS, *PIXEL_METRICS],
            title="Cross-domain: metrics per training and test domain",
            stem=out / "crossdomain",
            sort_key=lambda r: (str(r.value("method")), domain_of(r, "train"), domain_of(r, "test")),
        )
        if table:
            section.tables.append(table)
        section.records = records
        return section


# ----- limitations --------------------------------------------------------------------------------------
#: Methods at their standard setting with saved predictions. Tiny: every method that trains on no auxiliary
#: data (cheap, and where the tiny selection table's winners come from, so its known-weaknesses column is
#: measured for them) and two trained ones, to stay in minutes.
LIMITATION_METHODS = {"tiny": (*methods_where(lambda m: not m.trains), "aprillab", "anomalyclip")}
#: Methods tested under every corruption and strength (tiny: a training-free and a trained one).
ROBUSTNESS_METHODS = {"tiny": ("clip", "aprillab")}
#: Tiny: two objects and a texture are tested; the trained methods learn on the two other textures.
TINY_LIMITS = ("data.categories=[brick,disc,nut]", "train_data.categories=[grass,gravel]")
#: Published: the datasets that name defect types beyond MVTec AD's folders (logical vs structural, ...).
TYPED_DATASETS = ("mvtec_loco", "realiad", "mvtec_ad2")
KEEP_MAPS = "save_predictions=true"


def standard_shots(method: str) -> tuple[str, ...]:
    """Zero-shot, or one normal image for a method that needs references."""
    return ("shots=1", "reference_seed=0") if method in FEW_SHOT_ONLY else ZERO_SHOT


class LimitationsAnalysis(Analysis):
    name = "limitations"
    title = "Limitations: where the methods fail"
    description = (
        "Each method at its standard setting with its predictions saved (scores, maps, masks and each "
        "image's defect type), and under test-time corruptions. Per defect type: image AUROC of the "
        "type's images against the normal images and the recall at the run's image threshold "
        "(threshold.method). Per defect size: ground-truth regions (8-connected) binned by area as a share "
        "of the image, the share of regions found (at least half their pixels above the run's pixel "
        "threshold) and the mean per-region overlap. Categories ranked by image AUROC, objects against "
        "textures. Corruptions (rotation, brightness and contrast, blur, JPEG, Gaussian noise at 3 "
        "strengths, seeded per image, identical for every method; thresholds stay those chosen on clean "
        "held-out normals): the AUROC drop against the clean run. The gallery shows, per method and "
        "category, the lowest-scored anomalous and the highest-scored normal images."
    )

    def methods(self, scale: str) -> tuple[str, ...]:
        return LIMITATION_METHODS.get(scale, methods_where(lambda m: True))

    def base(self, method: str, scale: str) -> tuple[str, ...]:
        overrides = setup(method, scale)
        if scale == "tiny":
            kept = [o for o in overrides if not o.startswith(("data.categories", "train_data.categories"))]
            overrides = (*kept, TINY_LIMITS[0], *(TINY_LIMITS[1:] if method_info(method).trains else ()))
        return (*overrides, *standard_shots(method))

    def sweeps(self, scale: str) -> list[Sweep]:
        sweeps = []
        robust = ROBUSTNESS_METHODS.get(scale, methods_where(lambda m: True))
        for method in self.methods(scale):
            base = self.base(method, scale)
            sweeps.append(Sweep(f"limitations-{method}", (*base, KEEP_MAPS), _env(scale)))
            if method in robust:
                sweeps.append(
                    Sweep(
                        f"limitations-{method}-corruptions",
                        (
                            *base,
                            f"datamodule.test_corruption={sweep_list(CORRUPTIONS)}",
                            "datamodule.test_corruption_strength=1,2,3",
                        ),
                        _env(scale),
                    )
                )
            if scale == "published":
                sweeps.append(
                    Sweep(
                        f"limitations-{method}-types",
                        (*base, KEEP_MAPS, f"data={sweep_list(TYPED_DATASETS)}"),
                        _env(scale),
                    )
                )
        return sweeps

    def borrowed_records(self, own: list[Record], scale: str, output_root: str | Path) -> list[Record]:
        """The finished runs of every other analysis sweep of the scale that saved predictions
        (``ANALYSIS_ARGS=save_predictions=true``), except configurations this analysis ran itself."""
        mine = {sweep.folder_name(scale) for sweep in self.sweeps(scale)}
        folders = [
            folder
            for folder in sorted((Path(output_root) / "train" / "multiruns").glob(f"analysis-{scale}-*"))
            if folder.name not in mine
        ]
        seen = {dump(record.fields()) for record in own}
        return [
            record
            for record in load_records(folders)
            if dump(record.fields()) not in seen
            and corruption_of(record) is None
            and (record.path.parent / "predictions" / "scores.csv").is_file()
        ]

    @staticmethod
    def borrowed(record: Record, scale: str) -> bool:
        return not record.path.parent.parent.name.startswith(f"analysis-{scale}-limitations-")

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        own = [r for r in records if not self.borrowed(r, scale)]
        clean = [r for r in own if corruption_of(r) is None]
        findings = [found for record in clean if (found := findings_of(record)) is not None]
        standard = list(findings)  # each method at its standard setting: the known weaknesses
        for record in records:
            if self.borrowed(record, scale) and (found := findings_of(record)) is not None:
                # Another analysis's run: named by its sweep and job, so its bars stay apart.
                found.label += f" [{record.path.parent.parent.name}/{record.path.parent.name}]"
                findings.append(found)
        drops = robustness(own)
        for figures, tables in (
            type_section(findings, out),
            size_section(findings, out),
            category_section(clean, out),
            robustness_section(drops, out),
        ):
            section.figures += figures
            section.tables += tables
        section.figures += gallery_figures(findings, out)
        # Every method measured at its standard setting has an entry: none found is a finding too.
        section.weaknesses = {str(r.value("method")): [] for r in own} | weaknesses(standard, drops)
        table = write_rows(
            "Known weaknesses per method (from the defect types, sizes and corruptions above)",
            ["method", "known weaknesses"],
            [
                [method, "; ".join(items) or "none found"]
                for method, items in sorted(section.weaknesses.items())
            ],
            [
                sorted({r.source for r in own if r.value("method") == method})
                for method in sorted(section.weaknesses)
            ],
            out / "limitations_weaknesses",
        )
        if table:
            section.tables.append(table)
        if clean and not standard:
            section.notes.append(
                "No run saved its predictions (save_predictions=true): defect types, sizes and the gallery "
                "need them."
            )
        if findings and not any(f.has_pixel_threshold for f in findings):
            section.notes.append(
                "No run chose a pixel threshold: region recall and overlap are not computed."
            )
        section.records = records
        return section


# ----- alignment -----------------------------------------------------------------------------------------
#: Published: ViT-L-14-336 at 518 px, trained on VisA and tested on MVTec AD (the cross-dataset protocol of
#: the trained methods), AnomalyCLIP's short schedule for every trainable strategy.
ALIGNMENT_PUBLISHED = (
    "method=alignment",
    "backbone=vit_l14_336",
    "backbone.image_size=518",
    "data=mvtec",
    "train_data=visa",
    "trainer.max_epochs=2",
)


class AlignmentAnalysis(Analysis):
    name = "alignment"
    title = "Text-visual alignment strategies"
    description = (
        "One backbone, one set of taps (6/12/18/24 scaled to the depth), one prompt set, one scoring rule "
        "(softmax of the scaled cosine against the normal and abnormal text, averaged over the taps) and "
        "one training budget; only the alignment of patch features with the text space changes (method="
        "alignment, composed of the published methods' own parts): none (ln_post and the projection), "
        "windows (WinCLIP), surgery (the V-V / DPAM stream), linear (APRIL-GAN's per-tap projections), "
        "learned text prompts (AnomalyCLIP), static prompts on both sides, AdaCLIP's hybrid (static + "
        "image-conditioned) prompts with its projections (adaclip), and the published combinations. "
        "Training time is the job's training wall time (0 for training-free strategies), per-image time "
        "the efficiency probe's median without the feature cache. The published methods "
        "and the CLIP baseline run on the same test images, so each method's gain over CLIP can be set "
        "against its alignment's gain over 'none'."
    )

    def sweeps(self, scale: str) -> list[Sweep]:
        strategies = f"method.alignment={sweep_list(STRATEGIES)}"
        if scale == "tiny":
            base: tuple[str, ...] = (
                "experiment=demo",
                "method=alignment",
                "train_data=synthetic",
                "trainer.max_epochs=1",
                TINY_TRAIN,
            )
            grid = (*base, *TINY_COMMON, *ZERO_SHOT, UNCACHED, strategies)
        else:
            grid = (*ALIGNMENT_PUBLISHED, *ZERO_SHOT, UNCACHED, strategies)
        # Per-image time is measured on the model: no job reads its features from the cache.
        sweeps = [Sweep("alignment-grid", grid, _env(scale))]
        for method in ("clip", *PUBLISHED_ALIGNMENT):
            overrides = (*setup(method, scale), *ZERO_SHOT, UNCACHED)
            sweeps.append(Sweep(f"alignment-{method}", overrides, _env(scale)))
        return sweeps

    def render(self, records: list[Record], out: Path, scale: str) -> Section:
        section = self.section()
        rows = grid_rows(records, STRATEGIES)
        figure = grid_figure(rows, out)
        if figure:
            section.figures.append(figure)
        table = grid_table(rows, out)
        if table:
            section.tables.append(table)
        sentences, shares, sources = attribution(rows, records, PUBLISHED_ALIGNMENT)
        shared = attribution_table(shares, sources, out)
        if shared:
            section.tables.append(shared)
        section.notes += sentences
        if scale == "tiny":
            section.notes.append(
                "Tiny scale: a random tiny CLIP and one training epoch; the numbers prove the analysis, not "
                "the strategies."
            )
        section.records = records
        return section


ANALYSES: dict[str, Analysis] = {
    analysis.name: analysis
    for analysis in (
        LayersAnalysis(),
        ShotsAnalysis(),
        ResolutionAnalysis(),
        EfficiencyAnalysis(),
        PromptsAnalysis(),
        CrossDomainAnalysis(),
        LimitationsAnalysis(),
        AlignmentAnalysis(),
    )
}
