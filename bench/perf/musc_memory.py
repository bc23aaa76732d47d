"""Peak memory and time of MuSc's whole-category scoring against the number of images.

``python -m bench.perf musc-memory --backbone tiny --counts 10,20,40,80`` (CPU or GPU) or
``--backbone vit-l`` (ViT-L-14-336 with random weights at 518 px, the published setting; GPU advised).

Per image count N it prints: the size of the category's accumulated frozen features (what the
evaluation path holds until the category is complete), the peak memory that ``score_set`` adds on top
of them (GPU: ``torch.cuda.max_memory_allocated``; CPU: growth of the peak resident set, each count in
a fresh process) and the times of feature extraction and of ``score_set`` per image.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from bench import REPO_ROOT
from bench.report import BenchReport

BACKBONES = {
    "tiny": {"model": "anomaly-vlm-tiny", "image_size": 128},
    "vit-l": {"model": "ViT-L-14-336", "image_size": 518},
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(backbone_name: str, count: int, device: str, divide_num: int, batch_size: int) -> dict:
    from anomaly_vlm.backbones import FrozenCLIP
    from anomaly_vlm.methods.musc import MuSc

    torch.set_grad_enabled(False)
    spec = BACKBONES[backbone_name]
    backbone = FrozenCLIP(spec["model"], None, image_size=spec["image_size"], seed=0).to(device)
    model = MuSc(backbone, divide_num=divide_num)
    generator = torch.Generator().manual_seed(0)
    parts: dict[str, list] = {}
    started = time.perf_counter()
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        images = torch.rand(size, 3, spec["image_size"], spec["image_size"], generator=generator).to(device)
        for name, value in model.frozen_features(images).items():
            parts.setdefault(name, []).append(value.cpu())  # accumulated on the host, as the runner does
    features = {name: torch.cat(values) for name, values in parts.items()}
    if device == "cuda":
        torch.cuda.synchronize()
    extract_s = time.perf_counter() - started
    feature_mb = sum(value.numel() * value.element_size() for value in features.values()) / 2**20

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    prediction = model.score_set(features)
    if device == "cuda":
        torch.cuda.synchronize()
    score_s = time.perf_counter() - started
    result = {
        "backbone": backbone_name,
        "images": count,
        "divide_num": divide_num,
        "device": device,
        "features_mb": round(feature_mb, 1),
        "extract_ms_per_image": round(1000 * extract_s / count, 1),
        "score_set_ms_per_image": round(1000 * score_s / count, 1),
        "maps_mb": round(prediction.anomaly_map.numel() * 4 / 2**20, 1),
    }
    if device == "cuda":
        result["score_set_peak_gpu_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["score_set_peak_cpu_growth_mb"] = round(max(0.0, peak_after - max(peak_before, rss_before)), 1)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny")
    parser.add_argument("--counts", default="10,20,40,80")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--divide-num", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one count


def run(args: argparse.Namespace, report: BenchReport) -> int:
    if args.one is not None:
        print(json.dumps(measure(args.backbone, args.one, args.device, args.divide_num, args.batch_size)))
        return 0
    rows = report.results.setdefault("counts", [])
    for count in (int(c) for c in args.counts.split(",")):
        # A fresh process per count, so the CPU peak of one count does not hide the next one's.
        command = [
            sys.executable,
            "-m",
            "bench.perf",
            "musc-memory",
            "--backbone",
            args.backbone,
            "--device",
            args.device,
            "--divide-num",
            str(args.divide_num),
            "--batch-size",
            str(args.batch_size),
            "--one",
            str(count),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        if completed.returncode:
            print(completed.stderr[-2000:], file=sys.stderr)
            return completed.returncode
        line = completed.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        rows.append(json.loads(line))
    return 0
