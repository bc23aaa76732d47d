"""PromptAD cost on the published architecture with random weights (``python -m bench.perf promptad``).

Times what a category costs: building the visual memory and training both prompt branches on the k
shots (the official schedule: 100 epochs each), then scoring test images. ViT-B-16-plus-240 at 240 px,
random weights (the cost does not depend on the weights), category "bottle" (11 hand-written states).
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.promptad.torch_model import PromptADModel
from anomaly_vlm.prompts.promptad import PromptADPromptSet
from bench import REPO_ROOT
from bench.report import BenchReport


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    parser.add_argument("--model", default="ViT-B-16-plus-240")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--images", type=int, default=32, help="test images scored (one batch)")
    parser.add_argument("--category", default="bottle")


def run(args: argparse.Namespace, report: BenchReport) -> int:
    device = torch.device(args.device)
    data = yaml.safe_load((REPO_ROOT / "conf" / "prompts" / "promptad.yaml").read_text())
    data.pop("_target_")
    backbone = FrozenCLIP(args.model, image_size=240, precision=args.precision).to(device)
    model = PromptADModel(backbone, PromptADPromptSet(**data), epochs=args.epochs, progress=False).to(device)
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(args.shots, 3, 240, 240, generator=generator).to(device)
    queries = torch.rand(args.images, 3, 240, 240, generator=generator).to(device)
    sync(device)
    start = time.perf_counter()
    history = model.fit_category(args.category, model.reference_features(references))
    sync(device)
    fit_seconds = time.perf_counter() - start
    model.predict(queries[:2])  # warm-up
    sync(device)
    start = time.perf_counter()
    prediction = model.predict(queries)
    sync(device)
    score_seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report.environment.update(device=name, torch_threads=torch.get_num_threads())
    report.results.update(
        fit_s=fit_seconds,
        score_s=score_seconds,
        score_ms_per_image=1000 * score_seconds / args.images,
        loss_image=[history["image"][0], history["image"][-1]],
        loss_pixel=[history["pixel"][0], history["pixel"][-1]],
    )
    print(f"PromptAD, {args.model} random weights, {args.precision}, {name}, category '{args.category}'")
    print(
        f"  per-category training ({args.shots} shots, {args.epochs} epochs x 2 branches): "
        f"{fit_seconds:.1f} s; loss image {history['image'][0]:.4f} -> {history['image'][-1]:.4f}, "
        f"pixel {history['pixel'][0]:.4f} -> {history['pixel'][-1]:.4f}"
    )
    print(
        f"  scoring {args.images} images: {score_seconds:.3f} s "
        f"({1000 * score_seconds / args.images:.1f} ms/image); "
        f"scores {prediction.image_score.min():.4f}..{prediction.image_score.max():.4f}"
    )
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
        report.results["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return 0
