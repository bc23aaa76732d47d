"""Per-image time and peak memory of ours against the official code, same weights, inputs and precision.

``python -m bench.perf official --official-aprillab DIR [--width 1024] [--images 2] [--rounds 3]
[--precision fp32|amp-bf16]``. Built with the parity harnesses' loading (``bench.parity.aprillab``:
the official modules imported from the checkout, the same random ViT-L-14-336 state dict loaded by both
sides, the positional embedding resized at load as each side does), at the published 518 px:

* APRIL-GAN zero-shot: the official ``encode_image`` with its four tap blocks, CLS score and the
  per-stage maps of ``test.py`` (``official_stage_maps``) against our ``predict_images``.

The two are timed alternately round by round (who goes first alternates), median per image; peak
memory is the largest resident-set growth sampled during each side's timed calls. ``amp-bf16`` runs
ours with ``backbone.precision=amp-bf16`` and theirs under ``torch.autocast("cpu", torch.bfloat16)``,
the CPU counterpart of the release's CUDA fp16 autocast.

Only APRIL-GAN is covered so far; AnomalyCLIP, MuSc, PromptAD, AdaCLIP and anomalib's WinCLIP (the
latter in ``make bench-winclip``) are not timed here yet.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from bench.report import BenchReport

FULL_WIDTH = 1024


class PeakMemory:
    """Largest resident-set size seen while active, sampled every few milliseconds."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6


def aprillab_sides(folder: Path, tmp: Path, width: int, images: int, precision: str):
    """``(ours, theirs, inputs)`` callables of APRIL-GAN zero-shot on shared random weights."""
    from anomaly_vlm.backbones.clip import FrozenCLIP
    from anomaly_vlm.methods.aprillab import AprilGANModule
    from bench.parity.aprillab import (
        CLASS_NAME,
        MODEL,
        SIZE,
        STAGES,
        backbone_settings,
        import_official,
        load_prompts,
        official_stage_maps,
    )
    from bench.parity.official import cpu_device_moves, shrunk_backbone, small_vit_l14_336, smooth_images

    torch.manual_seed(0)
    official = import_official(folder)
    oc = official["open_clip"]
    settings = backbone_settings()
    text_width = 768 if width == FULL_WIDTH else 128
    config = small_vit_l14_336(
        width, text_width=text_width, text_layers=12, embed_dim=768 if width == FULL_WIDTH else 96
    )
    backbone, state = shrunk_backbone(MODEL, config, tmp, SIZE, settings)
    if precision != "fp32":
        backbone = FrozenCLIP(
            MODEL, str(tmp / "weights.pt"), image_size=SIZE, precision=precision, **settings
        )
    theirs = oc.model.CLIP(**{**config, "vision_cfg": {**config["vision_cfg"], "image_size": SIZE}})
    official_state = {key: value.clone() for key, value in state.items()}
    oc.model.resize_pos_embed(official_state, theirs)
    theirs.load_state_dict(official_state, strict=False)
    theirs.eval()
    module = AprilGANModule(backbone, load_prompts(), shots=0, text_cache_dir=str(tmp / "text"))
    linear = official["LinearLayer"](width, config["embed_dim"], len(STAGES), "ViT-L-14-336")
    with torch.no_grad():
        for ours_fc, their_fc in zip(module.model.projections, linear.fc, strict=True):
            ours_fc.weight.copy_(their_fc.weight)
            ours_fc.bias.copy_(their_fc.bias)
    tokenizer = oc.get_tokenizer("ViT-L-14-336")
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "amp-bf16"
        else contextlib.nullcontext
    )
    with torch.no_grad(), cpu_device_moves(), autocast():
        text = official["prompt_ensemble"].encode_text_with_prompt_ensemble(
            theirs, [CLASS_NAME], tokenizer, "cpu"
        )
    their_text = text[CLASS_NAME].float()
    module.setup_category(CLASS_NAME, None)
    batch = smooth_images(images, SIZE, seed=1)
    normalized = backbone.normalize(batch)

    def ours():
        with torch.no_grad():
            prediction = module.predict_images(batch)
        return prediction.image_score, prediction.anomaly_map

    def official_pass():
        with torch.no_grad(), cpu_device_moves(), autocast():
            features, _ = theirs.encode_image(normalized, STAGES)
            features = features / features.norm(dim=-1, keepdim=True)
            scores = (100.0 * features.float() @ their_text).softmax(dim=-1)[:, 1]
            stages = official_stage_maps(
                official, theirs, linear, normalized, their_text.to(features.dtype), STAGES
            )
        return scores, torch.stack([stage[:, 1] for stage in stages]).sum(dim=0)

    return ours, official_pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--official-aprillab", default=None, help="checkout of the APRIL-GAN release")
    parser.add_argument(
        "--width", type=int, default=FULL_WIDTH, help="vision width (1024 = ViT-L; less: quick)"
    )
    parser.add_argument("--images", type=int, default=2, help="images per call")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per side")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp-bf16"])
    parser.add_argument("--threads", type=int, default=None)


def run(args: argparse.Namespace, report: BenchReport) -> int:
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    report.environment["torch_threads"] = torch.get_num_threads()
    if not args.official_aprillab:
        raise SystemExit("error: --official-aprillab <checkout> is required (the only method timed so far)")
    rows = report.results.setdefault("methods", {})
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = aprillab_sides(
            Path(args.official_aprillab), Path(tmp), args.width, args.images, args.precision
        )
        ours(), theirs()  # warm-up
        times = {"ours": [], "official": []}
        peaks = {"ours": 0.0, "official": 0.0}
        delta = 0.0
        for round_index in range(args.rounds):
            order = [("ours", ours), ("official", theirs)]
            for name, function in order if round_index % 2 == 0 else order[::-1]:
                with PeakMemory() as memory:
                    started = time.perf_counter()
                    outputs = function()
                    times[name].append((time.perf_counter() - started) / args.images)
                peaks[name] = max(peaks[name], memory.growth_mb)
                if name == "ours":
                    our_outputs = outputs
                else:
                    their_outputs = outputs
            delta = max(delta, float((our_outputs[1].float() - their_outputs[1].float()).abs().max()))
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["official"])
    rows["aprillab zero-shot"] = {
        "ours_s_per_image": ours_s,
        "official_s_per_image": theirs_s,
        "ratio": theirs_s / ours_s,
        "ours_peak_mb": peaks["ours"],
        "official_peak_mb": peaks["official"],
        "map_max_delta": delta,
        "width": args.width,
        "precision": args.precision,
    }
    print(
        f"APRIL-GAN zero-shot, ViT-L-14-336 width {args.width} @ 518, {args.precision}: "
        f"ours {ours_s:.2f} s/img, official {theirs_s:.2f} s/img, ratio x{theirs_s / ours_s:.2f}; "
        f"peak memory growth ours {peaks['ours']:.0f} MB, official {peaks['official']:.0f} MB; "
        f"maps max|d| {delta:.1e}"
    )
    return 0
