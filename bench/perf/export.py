"""Per-image time and parity of an exported detector in onnxruntime and OpenVINO beside PyTorch.

For each (backbone, method, shots) case: build the method from the project's configs with random
weights (``pretrained=null``), move its learnable parameters off their initialisation (as training would),
set it up on random reference images, save it as a detector, export it
(``anomaly_vlm.export.export_onnx``, which checks onnxruntime against PyTorch), then time both on the
same random images: PyTorch ``Detector.score`` and onnxruntime ``InferenceSession.run`` (the
normalisation is outside the timed region on both sides), median of ``--repeats`` runs after one
warm-up, at batch 1 (per image) and at ``--batch``, each side with ``--threads`` threads.

With ``--runtimes`` (default: all that are installed) the same run adds, per case: the PyTorch detector
built with ``backbone.precision=amp-bf16`` (same seeds), the OpenVINO IR of the same ONNX graph at the
fp32 and bf16 inference hints, and the NNCF int8 IR calibrated on the normal photographs. Each is
compared with the PyTorch fp32 detector on real photographs, half with synthesized defects
(``bench.perf.precision.photo_set``): max |delta| of scores and maps, image and pixel AUROC deltas.

Usage (``make bench-export BENCH_EXPORT_ARGS=...``):
    python -m bench.perf export [--cases tiny,b16plus] [--methods winclip:1,clip] [--repeats 5]
        [--batch 4] [--threads 1] [--runtimes torch-bf16,openvino,openvino-bf16,openvino-int8]
        [--photos 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
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


def make_detector(
    root: Path, backbone: str, backbone_extra, method_name: str, shots: int, extra, precision: str = "fp32"
) -> Path:
    overrides = [
        f"backbone={backbone}",
        *backbone_extra,
        f"method={method_name}",
        f"shots={shots}",
        *extra,
        f"paths.output_dir={root}",
        f"paths.cache_dir={root / 'cache'}",
        f"backbone.precision={precision}",
    ]
    torch.manual_seed(0)  # learnable layers start equal in every precision
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
    folder = root / f"{backbone}-{method_name}-{shots}-{precision}"
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


RUNTIMES = ("torch-bf16", "openvino", "openvino-bf16", "openvino-int8")


def photo_metrics(prediction_scores, prediction_maps, expected, masks, labels) -> dict:
    """Max |delta| against the PyTorch fp32 detector and image/pixel AUROC deltas (float64)."""
    from anomaly_vlm.metrics.functional import auroc

    scores = np.asarray(prediction_scores, dtype=np.float64)
    maps = np.asarray(prediction_maps, dtype=np.float64)
    ref_scores = expected.image_score.double().numpy()
    ref_maps = expected.anomaly_map.double().numpy()
    truth = (masks > 0.5).numpy().reshape(-1)
    return {
        "score_delta": float(np.abs(scores - ref_scores).max()),
        "map_delta": float(np.abs(maps - ref_maps).max()),
        "image_auroc_delta": auroc(scores, labels.numpy()) - auroc(ref_scores, labels.numpy()),
        "pixel_auroc_delta": auroc(maps.reshape(-1), truth) - auroc(ref_maps.reshape(-1), truth),
    }


def bench_runtimes(folder: Path, args, backbone, backbone_extra, method_name, shots, extra) -> dict:
    """The other runtimes of one case: time per image (batch 1) and parity on photographs."""
    from bench.perf.precision import photo_set

    detector = Detector.load(folder)
    size = detector.image_size
    photos, masks, labels = photo_set(size, args.photos)
    expected = detector.score(photos)
    single = photos[:1]
    rows = {}
    wanted = args.runtimes.split(",") if args.runtimes else list(RUNTIMES)
    if "torch-bf16" in wanted:
        work = folder.parent / "bf16"
        other = Detector.load(
            make_detector(work, backbone, backbone_extra, method_name, shots, extra, precision="amp-bf16")
        )
        got = other.score(photos)
        rows["torch-bf16"] = {
            "ms_b1": 1e3 * median_seconds(lambda: other.score(single), args.repeats),
            **photo_metrics(got.image_score, got.anomaly_map, expected, masks, labels),
        }
    openvino_kinds = [kind for kind in wanted if kind.startswith("openvino")]
    if openvino_kinds:
        from anomaly_vlm.export.openvino import compile_openvino, export_openvino

        pixels = normalize(detector, photos).numpy()
        one = pixels[:1]
        calibration = folder.parent / f"{folder.name}-normal"
        calibration.mkdir(exist_ok=True)
        from PIL import Image

        for index in np.flatnonzero(labels.numpy() == 0):
            array = (photos[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array).save(calibration / f"{index}.png")
        for kind in openvino_kinds:
            hint = "bf16" if kind == "openvino-bf16" else "fp32"
            int8 = kind == "openvino-int8"
            exported = export_openvino(
                detector,
                out=folder / f"{kind}.xml",
                precision=hint,
                int8=int8,
                calibration=calibration if int8 else None,
                check=False,
            )
            compiled = compile_openvino(exported.path, threads=args.threads)
            outputs = compiled({INPUT_NAME: pixels})
            scores = outputs[compiled.output(OUTPUT_NAMES[0])]
            maps = outputs[compiled.output(OUTPUT_NAMES[1])]
            rows[kind] = {
                "ms_b1": 1e3 * median_seconds(lambda c=compiled: c({INPUT_NAME: one}), args.repeats),
                "export_s": exported.seconds,
                **photo_metrics(scores, maps, expected, masks, labels),
            }
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="tiny,b16plus", help=f"comma-separated of {sorted(CASES)}")
    parser.add_argument("--methods", default=None, help="method[:shots] subset, e.g. winclip:1,clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for the detectors (default: a temporary one)")
    parser.add_argument(
        "--runtimes",
        default=None,
        help=f"comma-separated of {', '.join(RUNTIMES)} (default: all; 'none' for onnxruntime only)",
    )
    parser.add_argument("--photos", type=int, default=8, help="photographs (half defective) for parity")


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
    other_lines: list[str] = []
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
            if args.runtimes != "none":
                others = bench_runtimes(folder, args, backbone, backbone_extra, method_name, shots, extra)
                rows[-1]["runtimes"] = others
                for kind, other in others.items():
                    line = (
                        f"|   {kind} | {method_name} | {shots} | - | {other['score_delta']:.1e} / "
                        f"{other['map_delta']:.1e} (dI-AUROC {other['image_auroc_delta']:+.3f}, "
                        f"dP-AUROC {other['pixel_auroc_delta']:+.3f}) | {other['ms_b1']:.1f} | - | - | - |"
                    )
                    print(line, flush=True)
                    other_lines.append(line)
    print(f"\n{args.threads} threads, median of {args.repeats} runs, onnxruntime CPU, float32\n")
    print("\n".join(lines))
    if other_lines:
        print("\nother runtimes against the PyTorch fp32 detector, on photographs (half with defects):")
        print("\n".join(other_lines))
    return 0
