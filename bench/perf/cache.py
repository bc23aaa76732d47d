"""Benchmark of the frozen-feature cache: the same sweep and the same training with and without it.

Two targets, each run as the user runs them (``train.py`` in a subprocess), on this machine, one after
the other, so the ratios compare like with like:

1. WinCLIP sweep: ``-m method=winclip prompts=winclip_cpe,two_prompt,aprilgan shots=0,1,2,4`` (12 jobs)
   on one synthetic category at 240 px with the ViT-B-16-plus-240 architecture (random weights):
   without the cache, with a cold float32 cache, and with a cold float16 cache. Wall time of the whole
   sweep; max |delta| over every metric of every job against the uncached sweep.
2. APRIL-GAN training: ``experiment=aprillab_synthetic`` with ViT-L-14-336 at 518 px (random weights),
   3 epochs on a few training images, without and with a cold cache. Training wall time (``fit``
   alone, from ``bench.perf.fit_timer.FitTimer``) and max |delta| of the trained parameters.

Disk use per image is read from the cache folders afterwards (per backbone and method).
Each run gets its own cache folder (text embeddings included), so both sides pay the same start-up.

Usage (``make bench-cache BENCH_CACHE_ARGS=...``):
    python -m bench.perf cache [--part winclip|aprillab|all] [--work DIR] [--train-images N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from anomaly_vlm.cache.__main__ import namespace_usage
from anomaly_vlm.cache.feature_cache import FeatureCache
from anomaly_vlm.data.datasets import SyntheticAD
from bench import REPO_ROOT
from bench.report import BenchReport

CATEGORY = "disc"
TRAIN_CATEGORY = "grass"


def synthetic_overrides(
    key: str, root: Path, category: str, good: int, per_defect: int, train: int
) -> list[str]:
    return [
        f"{key}=synthetic",
        f"{key}.root={root}",
        f"{key}.categories=[{category}]",
        f"+{key}.num_train={train}",
        f"+{key}.num_test_good={good}",
        f"+{key}.num_test_per_defect={per_defect}",
    ]


def run_train(overrides: list[str], label: str) -> float:
    """Run ``train.py`` with ``overrides``; returns the wall time in seconds (``train.py`` runs from the
    repository root, where ``bench`` is importable for the fit timer)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides]
    print(f"[{label}] {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"[{label}] failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    summary = [line for line in (result.stdout + result.stderr).splitlines() if "feature cache:" in line]
    print(
        f"[{label}] {elapsed:.1f} s"
        + (f"; last {summary[-1].split('feature cache:')[-1]}" if summary else "")
    )
    return elapsed


def job_metrics(sweep: Path) -> dict[str, dict]:
    """``<prompts> shots=<k>`` -> metrics, from every results.json of a sweep (folder names differ between
    the runs: they name the cache settings too)."""
    found = {}
    for path in sorted(sweep.rglob("results.json")):
        payload = json.loads(path.read_text())
        found[f"{payload['prompts']} shots={payload['shots']}"] = payload["metrics"]
    return found


def _flatten(metrics: dict, prefix: str = "") -> dict[str, float | None]:
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def max_metric_delta(reference: dict[str, dict], other: dict[str, dict]) -> float:
    """Largest |difference| of any metric (mean and per category) of any job."""
    if reference.keys() != other.keys():
        raise SystemExit(f"different jobs: {sorted(reference)} vs {sorted(other)}")
    worst = 0.0
    for job in reference:
        ours, theirs = _flatten(reference[job]), _flatten(other[job])
        for name, value in ours.items():
            if value is None or theirs.get(name) is None:
                if value != theirs.get(name):
                    raise SystemExit(f"{job} {name}: {value} vs {theirs.get(name)}")
                continue
            worst = max(worst, abs(float(value) - float(theirs[name])))
    return worst


def disk_use(folder: Path) -> list[dict]:
    rows = []
    for row in namespace_usage(FeatureCache(folder)):
        backbone = row["spec"].get("backbone", {})
        rows.append(
            {
                "backbone": backbone.get("architecture"),
                "image_size": backbone.get("image_size"),
                "storage": row["spec"].get("storage_dtype"),
                "feature_spec": row["spec"].get("feature_spec"),
                "images": row["entries"],
                "mb_per_image": round(row["bytes"] / max(row["entries"], 1) / 1e6, 3),
            }
        )
    return rows


def own_folders(folder: Path) -> list[str]:
    """Overrides that give one measured run its own text and feature caches (nothing shared between sides)."""
    return [f"paths.cache_dir={folder / 'cache'}", f"feature_cache.dir={folder / 'features'}"]


def bench_winclip(work: Path, args: argparse.Namespace) -> dict:
    data_root = work / "synthetic"
    SyntheticAD(
        data_root,
        [CATEGORY],
        num_train=4,
        num_test_good=args.test_good,
        num_test_per_defect=args.test_per_defect,
    ).samples(CATEGORY, "test")  # generated before timing
    common = [
        "-m",
        "method=winclip",
        "backbone=vit_b16_plus_240",
        "backbone.pretrained=null",
        "prompts=winclip_cpe,two_prompt,aprilgan",
        "shots=0,1,2,4",
        "reference_seed=0",
        "logger=none",
        "datamodule.num_workers=0",
        *synthetic_overrides("data", data_root, CATEGORY, args.test_good, args.test_per_defect, 4),
    ]
    runs = {
        "uncached": ["feature_cache.enabled=false"],
        "cached": [],
        "cached_fp16": ["feature_cache.dtype=float16"],
    }
    times, metrics = {}, {}
    for name, extra in runs.items():
        folder = work / f"winclip_{name}"
        overrides = [*common, *extra, *own_folders(folder), f"hydra.sweep.dir={folder / 'sweep'}"]
        times[name] = run_train(overrides, f"winclip {name}")
        metrics[name] = job_metrics(folder / "sweep")
    return {
        "jobs": len(metrics["uncached"]),
        "wall_s": {name: round(value, 1) for name, value in times.items()},
        "speedup": round(times["uncached"] / times["cached"], 2),
        "speedup_fp16": round(times["uncached"] / times["cached_fp16"], 2),
        "max_metric_delta": max_metric_delta(metrics["uncached"], metrics["cached"]),
        "max_metric_delta_fp16": max_metric_delta(metrics["uncached"], metrics["cached_fp16"]),
        "disk": disk_use(work / "winclip_cached" / "features")
        + disk_use(work / "winclip_cached_fp16" / "features"),
    }


def bench_aprillab(work: Path, args: argparse.Namespace) -> dict:
    data_root = work / "synthetic"
    train_good = max(args.train_images - 3, 1)
    for category, good, per_defect in ((CATEGORY, 1, 1), (TRAIN_CATEGORY, train_good, 1)):
        SyntheticAD(
            data_root, [category], num_train=1, num_test_good=good, num_test_per_defect=per_defect
        ).samples(category, "test")
    common = [
        "experiment=aprillab_synthetic",
        "backbone=vit_l14_336",
        "backbone.pretrained=null",
        f"trainer.max_epochs={args.epochs}",
        "reuse_trained=false",
        "logger=none",
        "datamodule.num_workers=0",
        *synthetic_overrides("data", data_root, CATEGORY, 1, 1, 1),
        *synthetic_overrides("train_data", data_root, TRAIN_CATEGORY, train_good, 1, 1),
    ]
    times, fits, states = {}, {}, {}
    runs = {"uncached": ["feature_cache.enabled=false"], "cached": []}
    if args.cached_first:
        runs = dict(reversed(runs.items()))
    for name, extra in runs.items():
        folder = work / f"aprillab_{name}"
        overrides = [
            *common,
            *extra,
            *own_folders(folder),
            f"hydra.run.dir={folder / 'run'}",
            "+callbacks.fit_timer._target_=bench.perf.fit_timer.FitTimer",
            f"+callbacks.fit_timer.path={folder / 'fit.json'}",
        ]
        times[name] = run_train(overrides, f"aprillab {name}")
        fits[name] = json.loads((folder / "fit.json").read_text())
        checkpoint = torch.load(
            folder / "run" / "checkpoints" / "trained.ckpt", map_location="cpu", weights_only=True
        )
        states[name] = checkpoint["state_dict"]
    delta = max(
        (states["uncached"][key] - states["cached"][key]).abs().max().item() for key in states["uncached"]
    )
    return {
        "training_images": train_good + 3,
        "epochs": args.epochs,
        "fit_s": {name: round(value["fit_s"], 1) for name, value in fits.items()},
        "epoch_s": {name: [round(s, 1) for s in value["epoch_s"]] for name, value in fits.items()},
        "job_wall_s": {name: round(value, 1) for name, value in times.items()},
        "training_speedup": round(fits["uncached"]["fit_s"] / fits["cached"]["fit_s"], 2),
        "max_parameter_delta": delta,
        "parameters_identical": all(
            torch.equal(states["uncached"][k], states["cached"][k]) for k in states["uncached"]
        ),
        "disk": disk_use(work / "aprillab_cached" / "features"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=["winclip", "aprillab", "all"], default="all")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--test-good", type=int, default=1, help="normal test images of the category")
    parser.add_argument(
        "--test-per-defect", type=int, default=1, help="test images per defect type (3 types)"
    )
    parser.add_argument("--train-images", type=int, default=4, help="APRIL-GAN training images (>= 4)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--cached-first",
        action="store_true",
        help="APRIL-GAN: run the cached training first; on a machine whose load falls over time this "
        "errs against the cache (the uncached run gets the quieter machine)",
    )


def run(args: argparse.Namespace, bench_report: BenchReport) -> int:
    bench_report.environment["torch_threads"] = torch.get_num_threads()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch folder: {work}; torch threads: {torch.get_num_threads()}")
    report = {}
    if args.part in {"winclip", "all"}:
        report["winclip_sweep"] = bench_winclip(work, args)
        print(json.dumps(report["winclip_sweep"], indent=2))
    if args.part in {"aprillab", "all"}:
        report["aprillab_training"] = bench_aprillab(work, args)
        print(json.dumps(report["aprillab_training"], indent=2))
    (work / "bench_cache.json").write_text(json.dumps(report, indent=2))
    print(f"figures: {work / 'bench_cache.json'}")
    bench_report.results.update(report)
    return 0
