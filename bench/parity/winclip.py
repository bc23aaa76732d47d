"""Numerical parity of our WinCLIP / WinCLIP+ with anomalib's (the peer implementation).

``python -m bench.parity winclip [--official PYTHON]`` (``make parity-winclip``)

WinCLIP's authors released no code; anomalib's implementation is the reference. It runs in its own
environment (``make parity-venv``: anomalib[clip] with open_clip 2.24, see ``winclip_anomalib_runner.py``);
``--official`` names that environment's interpreter and defaults to ``$PARITY_PYTHON``, else
``.venv-parity/bin/python``. Same random ViT-B-16-plus-240 weights, same already-normalised 240 x 240
inputs, class name "bottle", the compositional prompt ensemble; compared: max |delta| of image scores and
anomaly maps, zero-shot and 2-shot (target 1e-4), and the text classifier (shown, not checked).
"""

from __future__ import annotations

import argparse

import torch

from bench.parity.winclip_peer import CLASS_NAME, PeerInterpreter, shared_setup
from bench.report import ParityReport

OFFICIAL = PeerInterpreter()
TARGET = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--python", dest="official", help="same as --official")
    parser.add_argument("--images", type=int, default=2, help="query images")
    parser.add_argument("--shots", type=int, default=2, help="reference images of the few-shot check")


def run(args: argparse.Namespace, python: str, report: ParityReport) -> None:
    torch.set_grad_enabled(False)
    torch.manual_seed(0)

    with shared_setup(python, args.images, args.shots) as (_, ours, queries, references, peer, folder):
        weights, text = str(folder / "weights.pt"), str(folder / "t.pt")
        loaded = peer.call(cmd="load", weights=weights, class_name=CLASS_NAME, text_out=text)
        report.official.update({key: loaded[key] for key in ("anomalib", "open_clip", "torch")})
        report.note(f"anomalib side: open_clip {loaded['open_clip']}, torch {loaded['torch']}")
        if loaded["missing"] or loaded["unexpected"]:
            raise RuntimeError(f"state dict keys differ: {loaded}")
        theirs_text = torch.nn.functional.normalize(torch.load(folder / "t.pt", weights_only=True), dim=-1)
        text_delta = (theirs_text - ours.text_classifier).abs().max().item()
        report.add("text classifier (unit rows)", text_delta, target=None)

        for label, shots in (("zero-shot", 0), (f"{args.shots}-shot", args.shots)):
            if shots:
                peer.call(cmd="references", images=str(folder / "references.pt"))
                ours.set_reference_images(references, normalized=True)
            out = folder / f"theirs_{shots}.pt"
            peer.call(cmd="forward", images=str(folder / "queries.pt"), out=str(out))
            theirs = torch.load(out, weights_only=True)
            prediction = ours(queries, normalized=True)
            scores, maps = prediction.image_score, prediction.anomaly_map
            report.add(f"{label} image scores", (scores - theirs["scores"]).abs().max().item(), TARGET)
            report.add(f"{label} anomaly maps", (maps - theirs["maps"]).abs().max().item(), TARGET)
            report.note(
                f"  ({label}: scores {scores.min():.4f}..{scores.max():.4f}, "
                f"maps {maps.min():.4f}..{maps.max():.4f})"
            )
