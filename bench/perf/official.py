"""Per-image time and peak memory of ours against the official code, same weights, inputs and precision.

``python -m bench.perf official [--official-aprillab DIR] [--official-anomalyclip DIR] [--official-musc DIR]
[--official-promptad DIR] [--official-adaclip DIR] [--anomalib-python PYTHON] [--precision fp32,amp-bf16]
[--images 2] [--musc-images 8] [--rounds 3] [--methods musc,...] [--quick]`` (``make bench-official
APRILGAN_DIR=... ANOMALYCLIP_DIR=... MUSC_DIR=... PROMPTAD_DIR=... ADACLIP_DIR=...``; WinCLIP runs when the
anomalib side environment of ``make parity-venv`` exists). A method whose official code is not given is
skipped, and the run says so; ``--methods`` runs only the methods it names (each needs its official code).

Built with the parity harnesses' loading (``bench.parity.<method>``: the official modules imported from
the checkout, the same random state dict loaded by both sides, the positional embedding resized at load as
each side does; the learnable parts of ours copied from the official random initialisation), each at its
published architecture and input size, random weights:

* APRIL-GAN zero-shot (ViT-L-14-336 @ 518): the official ``encode_image`` once per batch with its four
  tap blocks, CLS score and the per-stage maps of ``test.py`` against our ``predict_images``;
* AnomalyCLIP zero-shot (ViT-L-14-336, QuickGELU, @ 518, block 24 as published, DPAM): ``test.py``'s loop
  (one image per forward, the prompt learner's text features computed once, at its random prompts;
  Gaussian blur) against ours with the same prompts;
* MuSc zero-shot, transductive (ViT-L-14-336 @ 518, taps 6/12/18/24, r 1/3/5, batches of 4): the
  release's ``make_category_data`` on a set of ``--musc-images`` images (encoding, LNAMD, MSM, RsCIN)
  against our ``frozen_features`` + ``score_set``; per-image time is the set's time over its size;
* PromptAD few-shot (ViT-B-16-plus-240 @ 240, ``--shots`` references, memory and text built before
  timing, prompts at their random initialisation: training is not timed): the official image branch
  (``train_cls.py``'s model, ``cls``) and pixel branch (``train_seg.py``'s model, ``seg``), which the
  release runs as two models each encoding the image, against our ``score_full``, one encoding for both;
* AdaCLIP zero-shot (ViT-L-14-336 @ 518, official prompting defaults, HSF): the official forward one
  image at a time with the Gaussian blur of its ``test.py`` against our ``predict_images``;
* WinCLIP zero-shot (ViT-B-16-plus-240 @ 240) against anomalib, the peer implementation, in its own
  interpreter (``bench.parity.winclip_peer``); its time is measured inside that process.

Each method runs in its own interpreter when several are measured (a process that has loaded and run
other checkouts' models times the next method slower than a fresh one). The two sides are timed
alternately round by round (who goes first alternates), after one untimed
warm-up call each; the median per image is reported. Peak memory is the largest resident-set growth
sampled during each side's timed calls (of the anomalib process for WinCLIP). max |delta| of the image
scores and maps of the timed calls is printed as the check that both computed the same thing (in fp32
they agree to parity precision; in ``amp-bf16`` they differ by rounding).

``--precision`` lists the modes, each timed in the same run: ``fp32``, and ``amp-bf16``: ours with
``backbone.precision=amp-bf16``, theirs under ``torch.autocast("cpu", torch.bfloat16)``, the CPU
counterpart of the releases' CUDA fp16 (APRIL-GAN: its whole pass, as its ``test.py`` wraps it; WinCLIP:
anomalib's whole forward; the others: the official model's image and text encoders, their outputs handed
to the official post-processing in float32, since that converts to NumPy, which has no bfloat16; AdaCLIP's
``.half()`` rounding of its prompt tokens keeps the tokens' type there, see :func:`half_keeps_type`).

``--quick`` checks the harness in a few minutes: narrow widths (same depths, input sizes and taps), two
images (MuSc: six), one round. Its figures are not measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from bench import REPO_ROOT
from bench.report import BenchReport

PRECISIONS = ("fp32", "amp-bf16")
#: (vision width, text width, embed dim) of the ViT-L-14-336 methods: published, and --quick.
VIT_L = (1024, 768, 768)
VIT_L_QUICK = (64, 64, 96)
CATEGORY = "bottle"


def release_freed_memory() -> None:
    """Hand memory freed earlier back to the system (glibc's ``malloc_trim``), so that the resident-set
    growth of a call counts what the call allocates, not what it reuses of an earlier call's heap."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Largest resident-set size of a process (default: this one) seen while active, sampled every few ms.

    For this process, freed heap memory is handed back first (:func:`release_freed_memory`); another
    process is asked to do the same before (``Pair.before_theirs``).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.005) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.process.pid == os.getpid():
            release_freed_memory()
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


#: What one side returns: image scores, maps, and the seconds it measured itself (None: time the call).
Outputs = tuple[Tensor, Tensor, float | None]


@dataclass
class Pair:
    """Both sides of one method, ready to be called repeatedly on the same inputs."""

    ours: Callable[[], Outputs]
    theirs: Callable[[], Outputs]
    images: int
    setting: str
    theirs_pid: int | None = None
    before_theirs: Callable[[], object] | None = None
    notes: list[str] = field(default_factory=list)


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The official side's counterpart of our ``backbone.precision``."""
    if precision == "amp-bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _as_float(value):
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float(item) for item in value)
    return value


@contextlib.contextmanager
def encoders_under_autocast(precision: str, *targets: tuple[object, str]) -> Iterator[None]:
    """Run each ``(object, method name)`` under :func:`autocast` with floating outputs returned as float32.

    For official code whose post-processing converts tensors to NumPy (no bfloat16 there): the encoders,
    where the time goes, run in mixed precision; what follows them as in float32.
    """
    if precision == "fp32":
        yield
        return
    saved = []
    for owner, name in targets:
        original = getattr(owner, name)

        def wrapped(*args, _original=original, **kwargs):
            with autocast(precision):
                return _as_float(_original(*args, **kwargs))

        saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, wrapped)
    try:
        yield
    finally:
        for owner, name, previous in reversed(saved):
            if previous is None:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)


@contextlib.contextmanager
def half_keeps_type(enabled: bool) -> Iterator[None]:
    """``Tensor.half()`` rounds to float16 and returns the tensor's own type while enabled.

    AdaCLIP's release rounds its prompt tokens with ``.half()`` (its GPU stream is float16); CPU autocast
    to bfloat16 cannot mix a float16 tensor into ``torch.cat``, so under ``amp-bf16`` the rounding is kept
    and the type is not changed.
    """
    if not enabled:
        yield
        return
    original = torch.Tensor.half
    torch.Tensor.half = lambda self, *args, **kwargs: original(self, *args, **kwargs).to(self.dtype)
    try:
        yield
    finally:
        torch.Tensor.half = original


def _prediction(prediction) -> Outputs:
    return prediction.image_score, prediction.anomaly_map, None


def vit_l_config(quick: bool) -> tuple[dict, int, int]:
    """The ViT-L-14-336-shaped config both sides load (narrow with ``quick``), its width and embed dim."""
    from bench.parity.official import small_vit_l14_336

    width, text_width, embed_dim = VIT_L_QUICK if quick else VIT_L
    config = small_vit_l14_336(width, text_width=text_width, text_layers=12, embed_dim=embed_dim)
    return config, width, embed_dim


# ----- the methods -------------------------------------------------------------------------------------
@contextlib.contextmanager
def aprillab_pair(folder: Path, precision: str, quick: bool, images: int) -> Iterator[Pair]:
    from anomaly_vlm.methods.aprillab import AprilGANModule
    from bench.parity import aprillab as parity
    from bench.parity.official import cpu_device_moves, shrunk_backbone, smooth_images

    torch.manual_seed(0)
    official = parity.import_official(folder)
    config, width, embed_dim = vit_l_config(quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = parity.backbone_settings()
        backbone, state = shrunk_backbone(parity.MODEL, config, tmp, parity.SIZE, settings, precision)
        theirs = parity.official_model(official, config, state)
        module = AprilGANModule(backbone, parity.load_prompts(), shots=0, text_cache_dir=str(tmp / "text"))
        linear = official["LinearLayer"](width, embed_dim, len(parity.STAGES), "ViT-L-14-336")
        with torch.no_grad():
            for ours_fc, their_fc in zip(module.model.projections, linear.fc, strict=True):
                ours_fc.weight.copy_(their_fc.weight)
                ours_fc.bias.copy_(their_fc.bias)
        tokenizer = official["open_clip"].get_tokenizer("ViT-L-14-336")
        with torch.no_grad(), cpu_device_moves(), autocast(precision):  # test.py: under its autocast
            text = official["prompt_ensemble"].encode_text_with_prompt_ensemble(
                theirs, [parity.CLASS_NAME], tokenizer, "cpu"
            )
        their_text = text[parity.CLASS_NAME].float()
        module.setup_category(parity.CLASS_NAME, None)
        batch = smooth_images(images, parity.SIZE, seed=1)
        normalized = backbone.normalize(batch)

        def ours() -> Outputs:
            with torch.no_grad():
                return _prediction(module.predict_images(batch))

        def official_pass() -> Outputs:
            # test.py: one encode_image gives the CLS score and the tokens of every stage map.
            with torch.no_grad(), cpu_device_moves(), autocast(precision):
                features, patch_tokens = theirs.encode_image(normalized, parity.STAGES)
                features = features / features.norm(dim=-1, keepdim=True)
                scores = (100.0 * features.float() @ their_text).softmax(dim=-1)[:, 1]
                stages = parity.official_maps_of_tokens(linear, patch_tokens, their_text.to(features.dtype))
            return scores, torch.stack([stage[:, 1] for stage in stages]).sum(dim=0), None

        yield Pair(ours, official_pass, images, f"ViT-L-14-336 width {width} @ {parity.SIZE}")


@contextlib.contextmanager
def anomalyclip_pair(folder: Path, precision: str, quick: bool, images: int) -> Iterator[Pair]:
    from bench.parity import anomalyclip as parity
    from bench.parity.official import cpu_device_moves, smooth_images

    torch.manual_seed(0)
    official = parity.import_official(folder)
    config, width, embed_dim = vit_l_config(quick)
    layers = [24]  # the published runs: --features_list 24
    with tempfile.TemporaryDirectory() as tmp:
        backbone, theirs, learner, _, _, with_official_prompts = parity.build_models(
            official, Path(tmp), config, layers, precision
        )
        module = with_official_prompts()
        module.setup_category("object", None)
        with torch.no_grad(), cpu_device_moves():  # test.py: once, before its loop
            their_text = parity.official_text(official, theirs, learner)
        batch = smooth_images(images, parity.SIZE, seed=1)
        normalized = backbone.normalize(batch)

        def ours() -> Outputs:
            with torch.no_grad():
                return _prediction(module.predict_images(batch))

        def official_pass() -> Outputs:
            with encoders_under_autocast(precision, (theirs, "encode_image")):
                scores, maps, _ = parity.official_test(official, theirs, their_text, normalized, layers)
            return scores, maps, None

        yield Pair(ours, official_pass, images, f"ViT-L-14-336 (QuickGELU) width {width} @ {parity.SIZE}")


@contextlib.contextmanager
def musc_pair(folder: Path, precision: str, quick: bool, images: int) -> Iterator[Pair]:
    from anomaly_vlm.methods.musc.torch_model import MuSc
    from bench.parity import musc as parity

    torch.manual_seed(0)
    width = VIT_L_QUICK[0] if quick else VIT_L[0]
    config = {**parity.shrunk_config(width), "embed_dim": VIT_L_QUICK[2] if quick else VIT_L[2]}
    size = 518
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backbone, theirs, musc_module, mvtec_module = parity.build_models(
            folder, work, config, size, "cpu", precision
        )
        model = MuSc(backbone, layers=parity.TAPS, r_list=(1, 3, 5), rscin_k=(1, 2, 3))
        batch = parity.smooth_images(images, size, seed=1)
        normalized = backbone.normalize(batch)
        kinds = ["good"] * (images - 6) + ["crack"] * 4 + ["hole"] * 2
        order: list[int] = []

        def ours() -> Outputs:
            with torch.no_grad():
                chunks = [model.frozen_features(batch[start : start + 4]) for start in range(0, images, 4)]
                features = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
                prediction = model.score_set(features)
            # the release scores its file list sorted by defect type and name: compare in its order
            return prediction.image_score[order], prediction.anomaly_map[order], None

        def official_pass() -> Outputs:
            with (
                torch.no_grad(),
                parity.release_imports(folder),
                encoders_under_autocast(precision, (theirs, "encode_image")),
            ):
                result = parity.run_official(
                    musc_module,
                    mvtec_module,
                    theirs,
                    normalized,
                    kinds,
                    1,
                    "mvtec_ad",
                    work,
                    "cpu",
                    taps=False,
                )
            order[:] = result["order"]
            return result["scores"], result["maps"], None

        # The warm-up call of the official side sets ``order`` before any output is compared.
        yield Pair(
            ours,
            official_pass,
            images,
            f"ViT-L-14-336 width {width} @ {size}, a set of {images}",
            notes=["MuSc: per-image time = the time of scoring the whole set / its size (transductive)"],
        )


@contextlib.contextmanager
def promptad_pair(folder: Path, precision: str, quick: bool, images: int, shots: int) -> Iterator[Pair]:
    import numpy as np
    import open_clip

    from bench.parity import promptad as parity

    official = parity.import_official(folder)
    architecture = parity.ARCHITECTURE if quick else open_clip.get_model_config("ViT-B-16-plus-240")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        state = parity.shared_state(official, Path(tmp), architecture)
        theirs, initial = parity.official_models(
            official, state, "fp32", CATEGORY, shots, torch.device("cpu")
        )
        ours_model = parity.our_model(state, precision, torch.device("cpu"), initial)
        # Training is not timed: both sides keep their prompts at the (shared) random initialisation.
        ours_model.train_branch = lambda category, branch, features: (
            ours_model.new_learner(category, branch),
            [],
        )
        generator = torch.Generator().manual_seed(1)
        rgb = (torch.rand(shots + images, 3, 30, 30, generator=generator) * 255).round()
        rgb = torch.nn.functional.interpolate(rgb, size=(240, 240), mode="nearest") / 255.0
        references, queries = rgb[:shots], rgb[shots:]
        with torch.no_grad():
            ours_model.fit_category(CATEGORY, ours_model.reference_features(references))
            for model in theirs.values():  # train_cls.py / train_seg.py fit(), without the epochs
                features = model.encode_image(parity.normalize(references))
                model.build_image_feature_gallery(features[2], features[3])
                model.build_text_feature_gallery()
        query_input = parity.normalize(queries.flip(1))  # the official test images are BGR

        def ours() -> Outputs:
            with torch.no_grad():
                scores, maps = ours_model.score_full(ours_model.frozen_features(queries))
            return scores, maps, None

        def official_pass() -> Outputs:
            encoders = [(model.model, "encode_image") for model in theirs.values()]
            with torch.no_grad(), encoders_under_autocast(precision, *encoders):
                text_scores, visual_maps = theirs["image"](query_input, "cls")
                visual_max = np.array(visual_maps).reshape(len(visual_maps), -1).max(axis=1)
                scores = 1.0 / (1.0 / visual_max + 1.0 / np.array(text_scores))  # metric_cal_img
                maps = np.stack(theirs["pixel"](query_input, "seg"))
            return torch.from_numpy(np.asarray(scores)), torch.from_numpy(maps), None

        width = architecture["vision_cfg"]["width"]
        yield Pair(
            ours,
            official_pass,
            images,
            f"ViT-B-16-plus-240 width {width} @ 240, {shots}-shot",
            notes=[
                "PromptAD: the release scores with two models (train_cls.py's for image scores, "
                "train_seg.py's for maps), each encoding the image; ours encodes once for both"
            ],
        )


@contextlib.contextmanager
def adaclip_pair(folder: Path, precision: str, quick: bool, images: int) -> Iterator[Pair]:
    from bench.parity import adaclip as parity
    from bench.parity.official import small_vit_l14_336, smooth_images

    official = parity.import_official(folder)
    _, _, method = parity.load_settings()
    width, text_width, _ = VIT_L_QUICK if quick else VIT_L
    config = small_vit_l14_336(width, text_width=text_width, text_layers=12, embed_dim=text_width)
    rounding = bool(method.get("prompt_fp16", True))
    with tempfile.TemporaryDirectory() as tmp:
        backbone, theirs, make_module = parity.build_models(
            official, Path(tmp), config, width, method, precision
        )
        module = make_module()
        parity.copy_parameters(theirs, module.model)
        module.setup_category(CATEGORY, None)
        batch = smooth_images(images, parity.SIZE, seed=1)
        normalized = backbone.normalize(batch)

        def ours() -> Outputs:
            with torch.no_grad():
                return _prediction(module.predict_images(batch))

        def official_pass() -> Outputs:
            with (
                half_keeps_type(precision != "fp32"),
                encoders_under_autocast(precision, (theirs, "extract_feat")),
            ):
                scores, maps = parity.official_test(theirs, normalized, CATEGORY, rounding)
            return scores, maps, None

        yield Pair(ours, official_pass, images, f"ViT-L-14-336 width {width} @ {parity.SIZE}")


@contextlib.contextmanager
def winclip_pair(python: str, precision: str, quick: bool, images: int) -> Iterator[Pair]:
    from bench.parity import promptad
    from bench.parity.winclip_peer import CLASS_NAME, shared_setup

    torch.manual_seed(0)
    config = promptad.ARCHITECTURE if quick else None
    with shared_setup(python, images, 1, config=config, precision=precision) as setup:
        backbone, model, queries, _, peer, folder = setup
        loaded = peer.call(
            cmd="load",
            weights=str(folder / "weights.pt"),
            class_name=CLASS_NAME,
            config=str(folder / "winclip-peer-small.json") if quick else None,
        )
        if loaded["missing"] or loaded["unexpected"]:
            raise RuntimeError(f"anomalib's CLIP and ours hold different keys: {loaded}")
        out = folder / "theirs.pt"

        def ours() -> Outputs:
            with torch.no_grad():
                return _prediction(model(queries, normalized=True))

        def official_pass() -> Outputs:
            reply = peer.call(
                cmd="forward", images=str(folder / "queries.pt"), out=str(out), precision=precision
            )
            theirs = torch.load(out, weights_only=True)
            return theirs["scores"], theirs["maps"], reply["seconds"]

        width = backbone.clip.visual.transformer.width
        yield Pair(
            ours,
            official_pass,
            images,
            f"ViT-B-16-plus-240 width {width} @ 240 (anomalib {loaded['anomalib']})",
            theirs_pid=peer.process.pid,
            before_theirs=lambda: peer.call(cmd="trim"),
        )


@dataclass(frozen=True)
class Method:
    label: str
    option: str
    variable: str
    pair: Callable


METHODS = {
    "aprillab": Method("APRIL-GAN zero-shot", "official_aprillab", "APRILGAN_DIR", aprillab_pair),
    "anomalyclip": Method(
        "AnomalyCLIP zero-shot", "official_anomalyclip", "ANOMALYCLIP_DIR", anomalyclip_pair
    ),
    "musc": Method("MuSc zero-shot (transductive)", "official_musc", "MUSC_DIR", musc_pair),
    "promptad": Method("PromptAD few-shot", "official_promptad", "PROMPTAD_DIR", promptad_pair),
    "adaclip": Method("AdaCLIP zero-shot", "official_adaclip", "ADACLIP_DIR", adaclip_pair),
    "winclip": Method("WinCLIP zero-shot vs anomalib", "anomalib_python", "make parity-venv", winclip_pair),
}


def official_source(name: str, value: str):
    """The checkout (or, for WinCLIP, the anomalib interpreter) named on the command line, checked
    before anything loads (exit 2 with an ``error:`` line when it is not what it should be)."""
    if name == "winclip":
        from bench.parity.winclip_peer import PeerInterpreter

        return PeerInterpreter().resolve(value, name)[0]
    from importlib import import_module

    return import_module(f"bench.parity.{name}").OFFICIAL.resolve(value, name)[0]


# ----- timing ------------------------------------------------------------------------------------------
def time_pair(pair: Pair, rounds: int) -> dict:
    """Warm-up, then ``rounds`` alternating timed calls per side; medians per image, peaks, deltas."""
    pair.ours(), pair.theirs()  # warm-up (lazy set-up, allocator)
    times: dict[str, list[float]] = {"ours": [], "official": []}
    peaks = {"ours": 0.0, "official": 0.0}
    delta_scores = delta_maps = 0.0
    sides = [("ours", pair.ours, None, None), ("official", pair.theirs, pair.theirs_pid, pair.before_theirs)]
    for round_index in range(rounds):
        outputs = {}
        for name, function, pid, before in sides if round_index % 2 == 0 else sides[::-1]:
            if before is not None:
                before()
            with PeakMemory(pid) as memory:
                started = time.perf_counter()
                scores, maps, seconds = function()
                elapsed = time.perf_counter() - started
            times[name].append((seconds if seconds is not None else elapsed) / pair.images)
            peaks[name] = max(peaks[name], memory.growth_mb)
            outputs[name] = (scores, maps)
        (our_scores, our_maps), (their_scores, their_maps) = outputs["ours"], outputs["official"]
        delta_scores = max(delta_scores, float((our_scores.double() - their_scores.double()).abs().max()))
        delta_maps = max(delta_maps, float((our_maps.double() - their_maps.double()).abs().max()))
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["official"])
    return {
        "ours_s_per_image": ours_s,
        "official_s_per_image": theirs_s,
        "ratio": theirs_s / ours_s,
        "ours_peak_mb": peaks["ours"],
        "official_peak_mb": peaks["official"],
        "scores_max_delta": delta_scores,
        "maps_max_delta": delta_maps,
        "ours_s": times["ours"],
        "official_s": times["official"],
    }


def print_table(label: str, setting: str, rows: dict[str, dict]) -> None:
    print(f"\n{label}: {setting} (theirs/ours >= 1.0: ours is not slower)")
    header = (
        f"  {'precision':9s} {'ours s/img':>10s} {'theirs s/img':>12s} {'theirs/ours':>11s} "
        f"{'ours peak MB':>12s} {'theirs peak MB':>14s} {'max|d| scores':>13s} {'max|d| maps':>11s}"
    )
    print(header)
    for precision, row in rows.items():
        print(
            f"  {precision:9s} {row['ours_s_per_image']:10.3f} {row['official_s_per_image']:12.3f} "
            f"{row['ratio']:11.2f} {row['ours_peak_mb']:12.0f} {row['official_peak_mb']:14.0f} "
            f"{row['scores_max_delta']:13.1e} {row['maps_max_delta']:11.1e}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, method in METHODS.items():
        if name == "winclip":
            parser.add_argument(
                "--anomalib-python",
                default=None,
                metavar="PYTHON",
                help="interpreter of the anomalib side environment (make parity-venv); WinCLIP is skipped "
                "without it",
            )
        else:
            flag = "--" + method.option.replace("_", "-")
            parser.add_argument(
                flag, default=None, metavar="DIR", help=f"official checkout ({method.variable})"
            )
    parser.add_argument(
        "--precision",
        default=",".join(PRECISIONS),
        help="comma-separated modes: fp32, amp-bf16 (default both)",
    )
    parser.add_argument("--images", type=int, default=None, help="images per call (default 2)")
    parser.add_argument("--musc-images", type=int, default=None, help="MuSc's set (default 8; quick 6)")
    parser.add_argument("--shots", type=int, default=4, help="PromptAD's references")
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per side (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="narrow widths, one round: a harness check")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--methods",
        default=None,
        metavar="NAMES",
        help=f"comma-separated subset of {', '.join(METHODS)} (default: those whose code is given)",
    )


def selected_methods(value: str | None) -> list[str]:
    """The methods ``--methods`` names (all when not given), checked before anything loads."""
    if value is None:
        return list(METHODS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    wrong = [name for name in names if name not in METHODS]
    if wrong or not names:
        raise SystemExit(f"error: --methods {value}: each name must be one of {', '.join(METHODS)}")
    return names


def run_alone(args: argparse.Namespace, name: str) -> dict:
    """Measure one method as ``--methods name`` in a child interpreter (its table goes to this output)
    and return its results."""
    command = [sys.executable, "-m", "bench.perf", "official", "--methods", name]
    option = METHODS[name].option
    command += [
        "--anomalib-python" if name == "winclip" else "--" + option.replace("_", "-"),
        str(getattr(args, option)),
    ]
    for flag, value in (
        ("--precision", args.precision),
        ("--images", args.images),
        ("--musc-images", args.musc_images),
        ("--shots", args.shots),
        ("--rounds", args.rounds),
        ("--threads", args.threads),
    ):
        if value is not None:
            command += [flag, str(value)]
    if args.quick:
        command.append("--quick")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="bench-official-") as scratch:
        report_file = Path(scratch) / "report.json"
        completed = subprocess.run([*command, "--json", str(report_file)], cwd=REPO_ROOT, check=False)
        if completed.returncode != 0 or not report_file.is_file():
            raise SystemExit(
                f"error: bench-official for {name} failed (exit {completed.returncode}): see above"
            )
        return json.loads(report_file.read_text())["results"]["methods"][name]


def run(args: argparse.Namespace, report: BenchReport) -> int:
    warnings.filterwarnings("ignore")
    precisions = [mode.strip() for mode in args.precision.split(",") if mode.strip()]
    wrong = [mode for mode in precisions if mode not in PRECISIONS]
    if wrong or not precisions:
        raise SystemExit(
            f"error: --precision {args.precision}: each mode must be one of {', '.join(PRECISIONS)}"
        )
    images = args.images or 2
    musc_images = args.musc_images or (6 if args.quick else 8)
    if musc_images < 6:
        raise SystemExit(f"error: --musc-images {musc_images}: MuSc's set needs at least 6 images")
    rounds = args.rounds or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the anomalib process (WinCLIP) inherits it
    report.environment["torch_threads"] = torch.get_num_threads()

    wanted = selected_methods(getattr(args, "methods", None))

    def flag(name: str) -> str:
        return "--anomalib-python" if name == "winclip" else f"--{METHODS[name].option.replace('_', '-')}"

    if getattr(args, "methods", None) is not None:
        for name in wanted:
            if not getattr(args, METHODS[name].option):
                raise SystemExit(
                    f"error: --methods {args.methods} names {name}, whose official code is not given: "
                    f"pass {flag(name)} ({METHODS[name].variable})"
                )
    chosen = {}
    for name, method in METHODS.items():
        value = getattr(args, method.option)
        if name not in wanted:
            print(f"skipped: {method.label} (not in --methods)")
        elif value:
            chosen[name] = official_source(name, value)
        else:
            print(f"skipped: {method.label} (no {flag(name)}; {method.variable})")
    if not chosen:
        raise SystemExit(
            "error: no official code given: pass at least one of "
            + ", ".join(f"{m.variable}=DIR" for n, m in METHODS.items() if n != "winclip")
            + " (WinCLIP needs the anomalib environment: make parity-venv)"
        )

    results = report.results.setdefault("methods", {})
    if len(chosen) > 1:
        # Each method in a fresh interpreter: a process that has already loaded and run other checkouts'
        # models (gigabytes of freed heap, their imports) times the next method slower than a fresh one.
        for name in chosen:
            results[name] = run_alone(args, name)
        return 0
    for name, source in chosen.items():
        method = METHODS[name]
        rows: dict[str, dict] = {}
        setting = ""
        for precision in precisions:
            extra = {"shots": args.shots} if name == "promptad" else {}
            count = musc_images if name == "musc" else images
            with method.pair(source, precision, args.quick, count, **extra) as pair:
                setting = pair.setting
                rows[precision] = {**time_pair(pair, rounds), "images": pair.images}
                notes = pair.notes
            gc.collect()
        print_table(method.label, setting, rows)
        for note in notes:
            print(f"  ({note})")
        results[name] = {"setting": setting, "quick": args.quick, "rounds": rounds, **rows}
    return 0
