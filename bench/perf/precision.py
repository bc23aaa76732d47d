"""Every method in fp32 and in each low precision, in one run (``make bench-precision``).

For each method: its published setting (``experiment=<method>_mvtec``, else ``method=<method>`` on its
published backbone) with random weights (``backbone.pretrained=null``) at the published input size,
built once per ``backbone.precision`` mode (fp32 first, the reference). The learnable parameters are
moved off their initialisation by the same seeded step in every mode. Two sets of images:

* ``synthetic``: the synthetic benchmark's test images (``data=synthetic``), resized to the input size;
* ``photos``: real photographs (scikit-image's bundled ones), half of them with a defect painted by the
  training-defect synthesizer (``train_data.synthesize_anomalies``), masks known.

Reported per mode: per-image time of ``predict_images`` (the whole set in one call, after one warm-up
call on two images, or on the whole set for a transductive method; text and reference setup outside
the timed region) and its ratio to fp32; the maps' max |delta| and Spearman rho against fp32; image and
pixel AUROC and their deltas against fp32 (metrics in float64). For the methods that train,
``--train-steps`` optimiser steps of the method's own ``training_step`` on synthesized-defect photos at
the input size, from the same initialisation in every mode: the trained parameters' max |delta| and
relative L2 drift against the fp32-trained ones.

``--quick`` runs the same on the tiny CLIP (``experiment=<method>_synthetic``, else ``backbone=tiny``)
with two images per set and one training step: a check of the harness, not a measurement.

Usage (``make bench-precision BENCH_PRECISION_ARGS=...``):
    python -m bench.perf precision [--methods winclip,aprillab] [--modes fp32,amp-bf16,bf16]
        [--images 6] [--train-steps 1] [--threads 2] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

import anomaly_vlm.config  # noqa: F401  (registers the typed schema that conf/train.yaml composes)
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.data.image_io import load_image, load_mask
from anomaly_vlm.methods.catalog import method_info
from anomaly_vlm.metrics.functional import auroc
from anomaly_vlm.tasks.instantiate import build
from bench import REPO_ROOT
from bench.report import BenchReport

METHODS = (
    "winclip",
    "aprillab",
    "anomalyclip",
    "musc",
    "adaclip",
    "promptad",
    "anomalydino",
    "aaclip",
    "bayespfl",
    "faprompt",
)
CPU_MODES = ("fp32", "amp-bf16", "bf16")
GPU_MODES = ("fp32", "amp-fp16", "fp16", "amp-bf16", "bf16")
PHOTOS = ("brick", "grass", "gravel", "coffee", "chelsea", "rocket", "astronaut", "camera")
CATEGORY = "object"


def compose_method(name: str, mode: str, quick: bool, shots: int | None):
    """The composed job config of ``name`` in ``mode`` (published, or tiny with ``quick``); ``shots=None``
    keeps the experiment's own."""
    info = method_info(name)
    experiments = set(info.experiments)
    if quick:
        base = [f"experiment={name}_synthetic"] if f"{name}_synthetic" in experiments else [f"method={name}"]
        # The tiny model of the method's own family (AnomalyDINO's is DINOv2).
        base.append("backbone=dinov2_tiny" if info.backbone.startswith("dinov2") else "backbone=tiny")
    else:
        base = [f"experiment={name}_mvtec"] if f"{name}_mvtec" in experiments else [f"method={name}"]
        base += [f"backbone={info.backbone}", "backbone.pretrained=null"]
    overrides = [*base, f"backbone.precision={mode}", "seed=0"]
    if shots is not None:
        overrides.append(f"shots={shots}")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def published_shots(name: str, info, quick: bool) -> int:
    """The experiment's shots (AnomalyDINO and PromptAD publish few-shot), else 0 where the method runs
    zero-shot and 1 where it needs references."""
    shots = int(compose_method(name, "fp32", quick, None).get("shots") or 0)
    return shots if shots or info.zero_shot else 1


def build_method(cfg, shots: int):
    torch.manual_seed(0)  # learnable layers start equal in every mode
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=shots, text_cache_dir=None
    )
    method.log = lambda *args, **kwargs: None  # training_step outside a trainer
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator, dtype=torch.float32))
    return method.eval()


def synthetic_set(size: int, count: int, root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test images of the synthetic benchmark (normal and defective alternately), masks, labels."""
    from anomaly_vlm.data.datasets import SyntheticAD

    source = SyntheticAD(root / "synthetic")
    normal, defective = [], []
    for category in source.categories:
        for sample in source.samples(category, "test"):
            (defective if sample.label else normal).append(sample)
    chosen = [pick for pair in zip(normal, defective, strict=False) for pick in pair][:count]
    images = torch.stack([load_image(sample.path, size) for sample in chosen])
    masks = torch.stack(
        [load_mask(s.mask_path, size)[0] if s.mask_path else torch.zeros(size, size) for s in chosen]
    )
    labels = torch.tensor([int(sample.label) for sample in chosen])
    return images, masks, labels


def photo_set(size: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real photographs at ``size``: the even ones normal, the odd ones with a synthesized defect."""
    from anomaly_vlm.data.defect_synthesis.synthesizer import AnomalySynthesizer
    from anomaly_vlm.data.defect_synthesis.textures import skimage_photo

    synthesizer = AnomalySynthesizer(probability=1.0, seed=seed)
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for index in range(count):
        photo = torch.from_numpy(skimage_photo(PHOTOS[(index // 2) % len(PHOTOS)])).permute(2, 0, 1).float()
        side = min(photo.shape[1:])
        photo = photo[:, :side, :side] / 255.0
        photo = torch.nn.functional.interpolate(
            photo[None], size=(size, size), mode="bilinear", antialias=True
        )[0]
        mask = torch.zeros(size, size)
        if index % 2:
            made = synthesizer.synthesize(photo.permute(1, 2, 0).clamp(0, 1).numpy(), rng)
            if made is not None:
                photo = torch.from_numpy(np.ascontiguousarray(made.image)).permute(2, 0, 1).float()
                mask = torch.from_numpy(np.asarray(made.mask, dtype=np.float32))
        images.append(photo.clamp(0, 1))
        masks.append(mask)
        labels.append(int(mask.any()))
    return torch.stack(images), torch.stack(masks), torch.tensor(labels)


def reference_photos(photos, size: int, shots: int) -> torch.Tensor:
    """``shots`` normal photographs, mirrored left to right: never one of the test images, whose
    distance to itself would be exactly 0 in fp32 and not in bf16 (a tie-breaking artefact in rho)."""
    images, _, labels = photos(size, 2 * shots)
    return torch.flip(images[labels == 0][:shots], dims=[-1])


def train_drift(method, images, masks, labels, steps: int) -> dict[str, torch.Tensor]:
    """The trainable parameters after ``steps`` optimiser steps of the method's own training_step."""
    batch = AnomalyBatch(
        image=images,
        label=labels,
        category=[CATEGORY] * len(images),
        path=[f"photo{index}" for index in range(len(images))],
        defect_type=["good" if not label else "synthesized" for label in labels.tolist()],
        mask=masks,
    )
    if not method.automatic_optimization:
        fit_steps(method, batch, steps)
    else:
        optimise(method, batch, steps)
    method.eval()
    return {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}


def fit_steps(method, batch: AnomalyBatch, steps: int) -> None:
    """``steps`` training steps (one batch per epoch) under a Lightning trainer: a method that steps its
    own optimisers (AA-CLIP's two stages, the text stage first) needs the trainer's ``optimizers()``."""
    import lightning as L

    class Repeated(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> AnomalyBatch:
            return batch

    trainer = L.Trainer(
        accelerator="gpu" if batch.image.is_cuda else "cpu",
        devices=1,
        max_steps=steps,
        max_epochs=10_000,  # max_steps ends it; a staged method checks that its stages fit the epochs
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(method, torch.utils.data.DataLoader(Repeated(), batch_size=None))


def optimise(method, batch: AnomalyBatch, steps: int) -> None:
    """``steps`` steps of the method's own ``training_step`` and first optimiser, outside a trainer."""
    optimizer = method.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    elif isinstance(optimizer, list | tuple):
        optimizer = optimizer[0]
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    method.train()
    with torch.enable_grad():
        for step in range(steps):
            optimizer.zero_grad()
            loss = method.training_step(batch, step)
            loss = loss["loss"] if isinstance(loss, dict) else loss
            loss.backward()
            optimizer.step()


def rho(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def metrics(prediction, masks, labels) -> dict[str, float | None]:
    scores = prediction.image_score.detach().double()
    maps = prediction.anomaly_map.detach().double()
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = torch.nn.functional.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0]
    has_both = 0 < int(labels.sum()) < len(labels)
    return {
        "image_auroc": auroc(scores.numpy(), labels.numpy()) if has_both else None,
        "pixel_auroc": auroc(maps.flatten().numpy(), (masks.flatten() > 0.5).numpy())
        if masks.any()
        else None,
    }


def run_method(name: str, args, sets: dict, report_rows: list, lines: list) -> list[str]:
    """Rows of ``name`` in every mode; returns the modes that failed (a row with the error each)."""
    info = method_info(name)
    shots = published_shots(name, info, args.quick)
    reference: dict = {}
    failed = []
    for mode in args.modes.split(","):
        try:
            run_mode(name, mode, info, shots, args, sets, reference, report_rows, lines)
        except Exception as error:  # noqa: BLE001 -- one mode's failure must not lose the others' rows
            if mode == "fp32":
                raise
            failed.append(mode)
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            print(f"{name} {mode}: FAILED: {message}", flush=True)
            report_rows.append({"method": name, "mode": mode, "error": message})
            lines.append(f"| {name} | {mode} | failed: {message[:120]} |")
        gc.collect()
    return failed


def run_mode(name, mode, info, shots, args, sets, reference, report_rows, lines) -> None:
    """One row: ``name`` built in ``mode``, timed and compared with the fp32 row in ``reference``."""
    cfg = compose_method(name, mode, args.quick, shots)
    started = time.perf_counter()
    method = build_method(cfg, shots).to(args.device)
    build_s = time.perf_counter() - started
    size = method.backbone.image_size
    # A transductive method (MuSc) needs at least 5 images scored together.
    count = max(args.images, 6) if info.transductive else args.images
    data = {key: make(size, count) for key, make in sets.items()}
    row = {
        "method": name,
        "mode": mode,
        "backbone": cfg.backbone.model,
        "image_size": size,
        "build_s": build_s,
    }
    row["precision"] = method.backbone.precision_record()
    trained = None
    if info.trains and args.train_steps:
        images, masks, labels = data["photos"]
        trained = train_drift(
            method,
            images.to(args.device),
            masks.to(args.device),
            labels.to(args.device),
            args.train_steps,
        )
    references = reference_photos(sets["photos"], size, shots).to(args.device) if shots else None
    with torch.no_grad():
        method.setup_category(CATEGORY, references)
        for set_name, (images, masks, labels) in data.items():
            images = images.to(args.device)
            # Warm-up; a transductive method scores whole sets only.
            method.predict_images(images if method.transductive else images[:2])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            prediction = method.predict_images(images)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / len(images)
            prediction.image_score = prediction.image_score.float().cpu()
            prediction.anomaly_map = prediction.anomaly_map.float().cpu()
            entry = {"s_per_image": seconds, **metrics(prediction, masks, labels)}
            if mode == "fp32":
                reference[set_name] = (prediction, entry)
            else:
                ref_prediction, ref_entry = reference[set_name]
                span = float(ref_prediction.anomaly_map.max() - ref_prediction.anomaly_map.min())
                entry.update(
                    speedup=ref_entry["s_per_image"] / seconds,
                    map_max_delta=float((prediction.anomaly_map - ref_prediction.anomaly_map).abs().max()),
                    map_range=span,
                    map_rho=rho(prediction.anomaly_map, ref_prediction.anomaly_map),
                    score_rho=rho(prediction.image_score, ref_prediction.image_score),
                )
                for key in ("image_auroc", "pixel_auroc"):
                    if entry[key] is not None and ref_entry[key] is not None:
                        entry[f"{key}_delta"] = entry[key] - ref_entry[key]
            row[set_name] = entry
    if trained is not None:
        if mode == "fp32":
            reference["trained"] = trained
        else:
            fp32 = reference["trained"]
            delta = max(float((trained[k].float() - fp32[k].float()).abs().max()) for k in fp32)
            norm = sum(float(fp32[k].float().square().sum()) for k in fp32) ** 0.5
            diff = sum(float((trained[k].float() - fp32[k].float()).square().sum()) for k in fp32) ** 0.5
            row["trained_max_delta"], row["trained_relative_drift"] = delta, diff / max(norm, 1e-30)
    report_rows.append(row)
    line = format_row(row)
    print(line, flush=True)
    lines.append(line)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_row(row: dict) -> str:
    cells = [row["method"], row["mode"], f"{row['backbone']}@{row['image_size']}"]
    for set_name in ("synthetic", "photos"):
        entry = row.get(set_name, {})
        cells += [
            _fmt(entry.get("s_per_image"), ".3f"),
            _fmt(entry.get("speedup"), ".2f"),
            _fmt(entry.get("map_max_delta"), ".1e"),
            _fmt(entry.get("map_rho"), ".4f"),
            _fmt(entry.get("image_auroc_delta"), "+.3f"),
            _fmt(entry.get("pixel_auroc_delta"), "+.3f"),
        ]
    cells.append(_fmt(row.get("trained_relative_drift"), ".1e"))
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| method | mode | backbone@px | synth s/img | x fp32 | map max|d| | map rho | dI-AUROC | dP-AUROC | "
    "photos s/img | x fp32 | map max|d| | map rho | dI-AUROC | dP-AUROC | trained drift |"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
    parser.add_argument(
        "--modes", default=None, help="comma-separated; default fp32 + the device's low modes"
    )
    parser.add_argument("--images", type=int, default=6, help="images per set (half with defects)")
    parser.add_argument("--train-steps", type=int, default=1, help="optimiser steps for trained methods")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny CLIP, 2 images, 1 step: a harness check")
    parser.add_argument(
        "--work", default=None, help="folder for the synthetic benchmark (default: temporary)"
    )


def run(args: argparse.Namespace, report: BenchReport) -> int:
    import tempfile

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.train_steps = 2, min(args.train_steps, 1)
    if args.modes is None:
        args.modes = ",".join(GPU_MODES if args.device.startswith("cuda") else CPU_MODES)
    if args.modes.split(",")[0] != "fp32":
        raise SystemExit("error: --modes must start with fp32 (the reference)")
    report.environment["torch_threads"] = torch.get_num_threads()
    report.environment["device"] = args.device
    if args.device.startswith("cuda"):
        report.environment["gpu"] = torch.cuda.get_device_name()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-precision-"))
    cached: dict = {}

    def once(key, make):
        def get(size, count):
            if (key, size, count) not in cached:
                cached[key, size, count] = make(size, count)
            return cached[key, size, count]

        return get

    sets = {
        "synthetic": once("synthetic", lambda size, count: synthetic_set(size, count, work)),
        "photos": once("photos", photo_set),
    }
    rows = report.results.setdefault("rows", [])
    lines = [HEADER, "|" + "---|" * 16]
    print(HEADER, flush=True)
    failures, unsupported = [], []
    for name in args.methods.split(","):
        try:
            failed = run_method(name, args, sets, rows, lines)
        except Exception as error:  # noqa: BLE001 -- one method's failure must not lose the others' rows
            failures.append(name)
            print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
            rows.append({"method": name, "error": f"{type(error).__name__}: {error}"})
            continue
        # A pure low-precision mode a method's own float32 layers cannot run with is reported, not fatal;
        # a mixed mode must work for every method.
        failures += [f"{name}:{mode}" for mode in failed if mode.startswith("amp-")]
        unsupported += [f"{name}:{mode}" for mode in failed if not mode.startswith("amp-")]
    report.results["failed"], report.results["unsupported"] = failures, unsupported
    print(f"\n{torch.get_num_threads()} threads, {args.device}, {args.images} images per set\n")
    print("\n".join(lines))
    with contextlib.suppress(Exception):
        report.environment["cpu_native_bf16"] = __import__(
            "anomaly_vlm.backbones.precision", fromlist=["cpu_has_native_bf16"]
        ).cpu_has_native_bf16()
    return 1 if failures else 0
