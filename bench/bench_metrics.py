"""Benchmark of the exact metrics on an MVTec-sized synthetic test set.

Generates, category by category, anomaly maps and blob masks (default: 1725 images of 256x256 over 15
categories, ~27% normal images), feeds them to :class:`anomaly_vlm.metrics.Evaluator` in batches as
torch tensors (as the framework does), computes and releases each category, and prints wall times,
peak memory and the macro-mean metrics.

Usage:
    .venv/bin/python bench/bench_metrics.py [--images 1725] [--size 256] [--categories 15]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import torch

try:
    from anomaly_vlm.metrics import METRIC_NAMES, Evaluator
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from anomaly_vlm.metrics import METRIC_NAMES, Evaluator


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1725, help="total number of test images")
    parser.add_argument("--size", type=int, default=256, help="map/mask side length")
    parser.add_argument("--categories", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--normal-frac", type=float, default=0.27)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="release categories only at the very end")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip tracemalloc (a little faster)")
    args = parser.parse_args()

    rss_start = rss_mib()
    if not args.no_tracemalloc:
        tracemalloc.start()
    rng = np.random.default_rng(args.seed)
    counts = np.full(args.categories, args.images // args.categories)
    counts[: args.images % args.categories] += 1
    ev = Evaluator()
    t_gen = t_update = t_compute = 0.0
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
        del scores, labels, maps, masks  # the evaluator must hold its own compact copy
        max_stored = max(max_stored, ev.stored_nbytes())
        t2 = time.perf_counter()
        result = ev.compute_category(name)
        if not args.keep:
            ev.release(name)
        t3 = time.perf_counter()
        t_gen, t_update, t_compute = t_gen + t1 - t0, t_update + t2 - t1, t_compute + t3 - t2
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
    if not args.no_tracemalloc:
        _, peak = tracemalloc.get_traced_memory()
        print(f"tracemalloc peak {peak / 2**20:.0f} MiB (numpy + Python allocations since start)")
    mean = ev.macro_mean()
    print("macro mean: " + "  ".join(f"{k}={mean[k]:.4f}" for k in METRIC_NAMES))


if __name__ == "__main__":
    main()
