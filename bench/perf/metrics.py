"""Benchmark of the exact metrics on an MVTec-sized synthetic test set.

Generates, category by category, anomaly maps and blob masks (default: 1725 images of 256x256 over 15
categories, ~27% normal images), feeds them to :class:`anomaly_vlm.metrics.Evaluator` in batches as
torch tensors (as the framework does), computes and releases each category, and prints wall times,
peak memory and the macro-mean metrics.

Then, on the first ``--compare`` categories, it times the anomalib-style computation of the same pixel
metrics: torchmetrics' exact ``binary_auroc`` over all pixels, and the AUPRO as anomalib computes it,
one torchmetrics ``binary_roc`` per ground-truth region (over the background plus that region), the
per-region TPRs averaged on the global FPR grid and integrated up to the FPR limit. It prints both
times, their ratio and the largest difference of the two results.

Usage (``make bench-metrics``):
    python -m bench.perf metrics [--images 1725] [--size 256] [--categories 15]
        [--compare 1] [--compare-images 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import cv2
import numpy as np
import torch

from anomaly_vlm.metrics import METRIC_NAMES, Evaluator
from bench.report import BenchReport


def rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_category(rng: np.random.Generator, n: int, size: int, normal_frac: float):
    """Synthetic test set of one category: image scores, labels, float32 maps and bool masks."""
    labels = (rng.random(n) >= normal_frac).astype(np.int64)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    maps = np.empty((n, size, size), dtype=np.float32)
    low = max(size // 16, 2)  # CLIP-like patch grid, upsampled bilinearly like real maps
    for i in range(n):
        if labels[i]:
            for _ in range(rng.integers(1, 5)):
                center = tuple(int(c) for c in rng.integers(0, size, 2))
                axes = tuple(int(a) for a in rng.integers(2, size // 8, 2))
                cv2.ellipse(masks[i], center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        coarse = rng.standard_normal((low, low)).astype(np.float32)
        noise = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
        signal = cv2.GaussianBlur(masks[i].astype(np.float32), (0, 0), size / 64)
        maps[i] = noise + 2.0 * rng.uniform(0.3, 1.0) * signal
        maps[i] += 0.1 * rng.standard_normal((size, size), dtype=np.float32)
    scores = maps.reshape(n, -1).max(axis=1) + rng.normal(scale=0.5, size=n)
    return scores, labels, maps, masks.astype(bool)


def anomalib_style_pixel_metrics(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> dict:
    """Pixel AUROC and AUPRO computed the way anomalib does, with torchmetrics' exact ROC curves."""
    from scipy import ndimage
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    preds = torch.from_numpy(maps).flatten()
    target = torch.from_numpy(masks).flatten()
    pixel_auroc = float(binary_auroc(preds, target.long()))
    # 8-connected regions per image, numbered across the whole set (0 = background).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, count = ndimage.label(masks, structure=structure)
    regions = torch.from_numpy(regions).flatten()
    background = regions == 0
    fpr_all = binary_roc(preds, target.long())[0].double().numpy()
    grid = np.append(fpr_all[fpr_all < fpr_limit], fpr_limit)
    pro = np.zeros_like(grid)
    for label in range(1, count + 1):
        region = regions == label
        keep = background | region
        fpr, tpr, _ = binary_roc(preds[keep], region[keep].long())
        pro += np.interp(grid, fpr.double().numpy(), tpr.double().numpy())
    pro /= count
    aupro = float(np.sum((grid[1:] - grid[:-1]) * (pro[1:] + pro[:-1]) / 2) / fpr_limit)
    return {"pixel_auroc": pixel_auroc, "pixel_aupro": aupro}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=1725, help="total number of test images")
    parser.add_argument("--size", type=int, default=256, help="map/mask side length")
    parser.add_argument("--categories", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--normal-frac", type=float, default=0.27)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="release categories only at the very end")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip tracemalloc (a little faster)")
    parser.add_argument(
        "--compare", type=int, default=1, help="categories also computed anomalib-style (0: none; slow)"
    )
    parser.add_argument("--compare-images", type=int, default=16, help="images per compared category")


def run(args: argparse.Namespace, report: BenchReport) -> int:
    categories = report.results.setdefault("categories", [])

    rss_start = rss_mib()
    if not args.no_tracemalloc:
        tracemalloc.start()
    rng = np.random.default_rng(args.seed)
    counts = np.full(args.categories, args.images // args.categories)
    counts[: args.images % args.categories] += 1
    ev = Evaluator()
    t_gen = t_update = t_compute = 0.0
    kept = []
    max_stored = 0
    t_total = time.perf_counter()
    for c, n in enumerate(counts):
        name = f"category_{c:02d}"
        t0 = time.perf_counter()
        scores, labels, maps, masks = make_category(rng, int(n), args.size, args.normal_frac)
        t1 = time.perf_counter()
        for i in range(0, int(n), args.batch):
            sl = slice(i, i + args.batch)
            ev.update(
                name,
                torch.from_numpy(scores[sl]),
                torch.from_numpy(labels[sl]),
                torch.from_numpy(maps[sl]),
                torch.from_numpy(masks[sl]),
            )
        compared = (maps, masks) if c < args.compare else None
        del scores, labels, maps, masks  # the evaluator must hold its own compact copy
        max_stored = max(max_stored, ev.stored_nbytes())
        t2 = time.perf_counter()
        result = ev.compute_category(name)
        if not args.keep:
            ev.release(name)
        t3 = time.perf_counter()
        t_gen, t_update, t_compute = t_gen + t1 - t0, t_update + t2 - t1, t_compute + t3 - t2
        if compared is not None:
            kept.append((name, *compared))
        categories.append(
            {"category": name, "images": int(n), "update_s": t2 - t1, "compute_s": t3 - t2, "metrics": result}
        )
        print(
            f"{name}: {n:4d} images  update {t2 - t1:5.2f}s  compute {t3 - t2:5.2f}s  "
            + "  ".join(f"{k}={v:.4f}" for k, v in result.items()),
            flush=True,
        )
    t_total = time.perf_counter() - t_total

    print(f"\n{args.images} images of {args.size}x{args.size}, {args.categories} categories")
    print(
        f"wall time total {t_total:.2f}s = generation {t_gen:.2f}s + update {t_update:.2f}s "
        f"+ compute/release {t_compute:.2f}s  (evaluator {t_update + t_compute:.2f}s)"
    )
    print(f"peak RSS (ru_maxrss) {rss_mib():.0f} MiB (after imports {rss_start:.0f} MiB)")
    print(f"max evaluator storage {max_stored / 2**20:.0f} MiB")
    report.results.update(
        wall_s=t_total,
        generation_s=t_gen,
        update_s=t_update,
        compute_release_s=t_compute,
        evaluator_s=t_update + t_compute,
        peak_rss_mib=rss_mib(),
        rss_after_imports_mib=rss_start,
        max_evaluator_storage_mib=max_stored / 2**20,
    )
    if not args.no_tracemalloc:
        _, peak = tracemalloc.get_traced_memory()
        print(f"tracemalloc peak {peak / 2**20:.0f} MiB (numpy + Python allocations since start)")
        report.results["tracemalloc_peak_mib"] = peak / 2**20
    mean = ev.macro_mean()
    print("macro mean: " + "  ".join(f"{k}={mean[k]:.4f}" for k in METRIC_NAMES))
    report.results["macro_mean"] = {k: mean[k] for k in METRIC_NAMES}
    if kept:
        report.results["anomalib_style"] = compare(kept, args.compare_images)
    return 0


def compare(kept: list, images: int) -> dict:
    """Time the anomalib-style pixel metrics against the evaluator on the first images of kept categories.

    The anomalib way costs one ROC over the whole background per region, so it runs on a subset.
    """
    ours_total = theirs_total = worst = 0.0
    for name, maps, masks in kept:
        maps, masks = maps[:images], masks[:images]
        started = time.perf_counter()
        ev = Evaluator()
        ev.update(
            name,
            np.zeros(len(maps)),
            np.arange(len(maps)) % 2,
            torch.from_numpy(maps),
            torch.from_numpy(masks),
        )
        ours = ev.compute_category(name)
        middle = time.perf_counter()
        theirs = anomalib_style_pixel_metrics(maps, masks)
        done = time.perf_counter()
        diff = max(abs(theirs[k] - ours[k]) for k in theirs)
        ours_total, theirs_total = ours_total + middle - started, theirs_total + done - middle
        worst = max(worst, diff)
        print(
            f"{name} (first {len(maps)} images): anomalib-style {done - middle:6.2f}s vs evaluator "
            f"{middle - started:5.2f}s  max |difference| {diff:.1e}",
            flush=True,
        )
    print(
        f"pixel AUROC + AUPRO: anomalib-style {theirs_total:.2f}s, evaluator (all seven metrics) "
        f"{ours_total:.2f}s: {theirs_total / ours_total:.1f}x faster; results agree to {worst:.1e}"
    )
    return {
        "categories": [name for name, _, _ in kept],
        "images_per_category": images,
        "anomalib_style_s": theirs_total,
        "evaluator_s": ours_total,
        "speedup": theirs_total / ours_total,
        "max_difference": worst,
    }
