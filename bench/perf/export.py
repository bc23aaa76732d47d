"""Per-image time of an exported detector in onnxruntime (CPU) beside the PyTorch detector.

For each (backbone, method, shots) case: build the method from the project's configs with random
weights (``pretrained=null``), move its learnable parameters off their initialisation (as training would),
set it up on random reference images, save it as a detector, export it
(``anomaly_vlm.export.export_onnx``, which checks onnxruntime against PyTorch), then time both on the
same random images: PyTorch ``Detector.score`` and onnxruntime ``InferenceSession.run`` (the
normalisation is outside the timed region on both sides), median of ``--repeats`` runs after one
warm-up, at batch 1 (per image) and at ``--batch``, each side with ``--threads`` threads.

Usage (``make bench-export BENCH_EXPORT_ARGS=...``):
    python -m bench.perf export [--cases tiny,b16plus] [--methods winclip:1,clip] [--repeats 5]
        [--batch 4] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import anomaly_vlm.config  # noqa: F401  (registers the typed schema that conf/train.yaml composes)
from anomaly_vlm.deploy import Detector
from anomaly_vlm.deploy.detector import save_detector
from anomaly_vlm.export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from anomaly_vlm.export.onnx import normalize
from anomaly_vlm.tasks.instantiate import build
from bench import REPO_ROOT
from bench.report import BenchReport

TINY_ANOMALYCLIP = ("method.layers=[8]", "prompts.deep_prompt_depth=4")
#: case group -> (backbone config, extra backbone overrides, [(method, shots, extra overrides)])
CASES = {
    "tiny": (
        "tiny",
        (),
        [
            ("clip", 0, ()),
            ("winclip", 0, ()),
            ("winclip", 4, ()),
            ("aprillab", 0, ()),
            ("aprillab", 4, ()),
            ("anomalyclip", 0, TINY_ANOMALYCLIP),
        ],
    ),
    "b16plus": (
        "vit_b16_plus_240",
        ("backbone.pretrained=null",),
        [("clip", 0, ()), ("winclip", 0, ()), ("winclip", 1, ())],
    ),
    # ViT-L-14-336 at 518 px: a 1.2 GB graph and seconds per image on a small CPU; run it on purpose.
    "l14": (
        "vit_l14_336",
        ("backbone.pretrained=null",),
        [("aprillab", 0, ()), ("aprillab", 1, ())],
    ),
}


def make_detector(root: Path, backbone: str, backbone_extra, method_name: str, shots: int, extra) -> Path:
    overrides = [
        f"backbone={backbone}",
        *backbone_extra,
        f"method={method_name}",
        f"shots={shots}",
        *extra,
        f"paths.output_dir={root}",
        f"paths.cache_dir={root / 'cache'}",
    ]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=shots, text_cache_dir=None
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    size = method.backbone.image_size
    references = torch.rand(shots, 3, size, size, generator=generator) if shots else None
    method.eval().setup_category("widget", references)
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    folder = root / f"{backbone}-{method_name}-{shots}"
    # A scored set: APRIL-GAN's few-shot set statistics are frozen from it into the detector.
    scored = method.predict_images(torch.rand(5, 3, size, size, generator=generator))
    return save_detector(folder, method, "widget", config, None, method_name, scored)


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up: first-call allocations, onnxruntime's arena
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_case(folder: Path, repeats: int, batch: int, threads: int) -> dict:
    import onnxruntime as ort

    detector = Detector.load(folder)
    exported = export_onnx(detector)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
    row = {
        "export_s": exported.seconds,
        "mb": exported.path.stat().st_size / 1e6,
        "score_delta": exported.score_delta,
        "map_delta": exported.map_delta,
    }
    size = detector.image_size
    for count in sorted({1, batch}):
        images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(count))
        pixels = normalize(detector, images).numpy()
        torch_s = median_seconds(lambda images=images: detector.score(images), repeats)
        onnx_s = median_seconds(
            lambda pixels=pixels: session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels}), repeats
        )
        row[f"torch_ms_b{count}"] = 1e3 * torch_s / count
        row[f"onnx_ms_b{count}"] = 1e3 * onnx_s / count
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="tiny,b16plus", help=f"comma-separated of {sorted(CASES)}")
    parser.add_argument("--methods", default=None, help="method[:shots] subset, e.g. winclip:1,clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for the detectors (default: a temporary one)")


def run(args: argparse.Namespace, report: BenchReport) -> int:
    torch.set_num_threads(args.threads)
    report.environment["torch_threads"] = args.threads
    rows = report.results.setdefault("cases", [])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-export-"))
    header = (
        f"| backbone | method | shots | graph MB | max abs delta score / map | PyTorch ms/img (b1) | "
        f"onnxruntime ms/img (b1) | PyTorch ms/img (b{args.batch}) | onnxruntime ms/img (b{args.batch}) |"
    )
    lines = [header, "|" + "---|" * 9]
    if args.batch < 2:
        raise SystemExit("error: --batch must be at least 2 (batch 1 is always measured)")
    for group in args.cases.split(","):
        if group not in CASES:
            raise SystemExit(f"error: --cases {group} is not one of {sorted(CASES)}")
        backbone, backbone_extra, cases = CASES[group]
        for method_name, shots, extra in cases:
            if args.methods and not {method_name, f"{method_name}:{shots}"} & set(args.methods.split(",")):
                continue
            folder = make_detector(work, backbone, backbone_extra, method_name, shots, extra)
            row = bench_case(folder, args.repeats, args.batch, args.threads)
            rows.append({"backbone": backbone, "method": method_name, "shots": shots, **row})
            line = (
                f"| {backbone} | {method_name} | {shots} | {row['mb']:.0f} | "
                f"{row['score_delta']:.1e} / {row['map_delta']:.1e} | {row['torch_ms_b1']:.1f} | "
                f"{row['onnx_ms_b1']:.1f} | {row[f'torch_ms_b{args.batch}']:.1f} | "
                f"{row[f'onnx_ms_b{args.batch}']:.1f} |"
            )
            print(line, flush=True)
            lines.append(line)
    print(f"\n{args.threads} threads, median of {args.repeats} runs, onnxruntime CPU, float32\n")
    print("\n".join(lines))
    return 0
