"""Speed of our WinCLIP forward against anomalib's on this CPU (``make bench-winclip``).

``python -m bench.perf winclip [--python PYTHON]``; anomalib runs in the side environment of
``make parity-venv`` (``--python`` defaults to ``$PARITY_PYTHON``, else ``.venv-parity/bin/python``).

Same random ViT-B-16-plus-240 weights and the same already-normalised 240 x 240 inputs for both; the
two run in separate processes and are timed alternately (round by round, alternating who goes first)
so that load from other processes hits both alike. Zero-shot and k-shot (default 4); the reference
memories are built once before timing, as both implementations do per category. The outputs of the
timed calls are compared too (the speed-up only counts with max |delta| <= 1e-4).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.parity.winclip_peer import CLASS_NAME, Peer, default_peer_python, shared_setup
from bench.report import BenchReport

TOLERANCE = 1e-4


def time_ours(model, queries: torch.Tensor, times: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    started = time.perf_counter()
    prediction = model(queries, normalized=True)
    times.append(time.perf_counter() - started)
    return prediction.image_score, prediction.anomaly_map


def time_theirs(peer: Peer, queries: Path, out: Path, times: list[float]) -> None:
    times.append(peer.call(cmd="forward", images=str(queries), out=str(out))["seconds"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--python", default=default_peer_python(), help="interpreter of the anomalib env")
    parser.add_argument("--batch", type=int, default=1, help="images per forward call")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per implementation and mode")
    parser.add_argument("--shots", type=int, default=4)


def run(args: argparse.Namespace, report: BenchReport) -> int:
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}")
    report.environment["torch_threads"] = torch.get_num_threads()

    results = {}
    with shared_setup(args.python, args.batch, args.shots) as (_, ours, queries, references, peer, folder):
        loaded = peer.call(cmd="load", weights=str(folder / "weights.pt"), class_name=CLASS_NAME)
        report.environment["peer"] = {key: loaded.get(key) for key in ("anomalib", "open_clip", "torch")}
        for label, shots in (("zero-shot", 0), (f"{args.shots}-shot", args.shots)):
            if shots:
                started = time.perf_counter()
                ours.set_reference_images(references, normalized=True)
                ours_setup = time.perf_counter() - started
                reply = peer.call(cmd="references", images=str(folder / "references.pt"))
                theirs_setup = reply["seconds"]
                print(f"{label} reference memory: ours {ours_setup:.1f} s, anomalib {theirs_setup:.1f} s")
                memory = {"ours_s": ours_setup, "anomalib_s": theirs_setup}
                report.results[f"{label} reference memory"] = memory
            ours_times, theirs_times, delta = [], [], 0.0
            out = folder / "theirs.pt"
            for round_index in range(args.rounds):
                if round_index % 2:
                    scores, maps = time_ours(ours, queries, ours_times)
                    time_theirs(peer, folder / "queries.pt", out, theirs_times)
                else:
                    time_theirs(peer, folder / "queries.pt", out, theirs_times)
                    scores, maps = time_ours(ours, queries, ours_times)
                theirs = torch.load(out, weights_only=True)
                delta = max(
                    delta,
                    (scores - theirs["scores"]).abs().max().item(),
                    (maps - theirs["maps"]).abs().max().item(),
                )
            ours_s = statistics.median(ours_times) / args.batch
            theirs_s = statistics.median(theirs_times) / args.batch
            results[label] = (ours_s, theirs_s, delta)
            report.results[label] = {
                "ours_s_per_image": ours_s,
                "anomalib_s_per_image": theirs_s,
                "speedup": theirs_s / ours_s,
                "max_delta": delta,
                "ours_s": ours_times,
                "anomalib_s": theirs_times,
            }
            print(
                f"{label:10s} per image: ours {ours_s:.2f} s, anomalib {theirs_s:.2f} s, "
                f"speed-up x{theirs_s / ours_s:.2f} (max|d| of outputs {delta:.1e}); "
                f"ours {[round(t, 2) for t in ours_times]}, "
                f"anomalib {[round(t, 2) for t in theirs_times]}"
            )
    ok = all(delta <= TOLERANCE for _, _, delta in results.values())
    print("outputs agree" if ok else f"OUTPUTS DIFFER by more than {TOLERANCE:.0e}")
    report.results["outputs_agree"] = ok
    return 0 if ok else 1
