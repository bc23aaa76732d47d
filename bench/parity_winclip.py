"""Numerical parity of our WinCLIP / WinCLIP+ with anomalib's (``make parity-winclip``).

Same random ViT-B-16-plus-240 weights, same already-normalised 240 x 240 inputs, class name "bottle",
the compositional prompt ensemble; prints max |delta| of image scores and anomaly maps, zero-shot and
2-shot. anomalib must run with open_clip 2.24 (see ``winclip_anomalib_runner.py``).
"""

from __future__ import annotations

import argparse

import torch
from winclip_peer import CLASS_NAME, default_peer_python, shared_setup

TARGET = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default=default_peer_python(), help="interpreter of the anomalib env")
    parser.add_argument("--images", type=int, default=2, help="query images")
    parser.add_argument("--shots", type=int, default=2, help="reference images of the few-shot check")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.manual_seed(0)

    with shared_setup(args.python, args.images, args.shots) as (_, ours, queries, references, peer, folder):
        weights, text = str(folder / "weights.pt"), str(folder / "t.pt")
        loaded = peer.call(cmd="load", weights=weights, class_name=CLASS_NAME, text_out=text)
        print(f"anomalib side: open_clip {loaded['open_clip']}, torch {loaded['torch']}")
        if loaded["missing"] or loaded["unexpected"]:
            raise RuntimeError(f"state dict keys differ: {loaded}")
        theirs_text = torch.nn.functional.normalize(torch.load(folder / "t.pt", weights_only=True), dim=-1)
        text_delta = (theirs_text - ours.text_classifier).abs().max().item()
        print(f"text classifier (unit rows)    max|d| = {text_delta:.2e}")

        rows = []
        for label, shots in (("zero-shot", 0), (f"{args.shots}-shot", args.shots)):
            if shots:
                peer.call(cmd="references", images=str(folder / "references.pt"))
                ours.set_reference_images(references, normalized=True)
            out = folder / f"theirs_{shots}.pt"
            peer.call(cmd="forward", images=str(folder / "queries.pt"), out=str(out))
            theirs = torch.load(out, weights_only=True)
            prediction = ours(queries, normalized=True)
            scores, maps = prediction.image_score, prediction.anomaly_map
            score_delta = (scores - theirs["scores"]).abs().max().item()
            map_delta = (maps - theirs["maps"]).abs().max().item()
            rows.append((label, score_delta, map_delta, scores, maps))
    worst = 0.0
    for label, score_delta, map_delta, scores, maps in rows:
        worst = max(worst, score_delta, map_delta)
        print(
            f"{label:10s} image scores max|d| = {score_delta:.2e}   anomaly maps max|d| = {map_delta:.2e}   "
            f"(scores {scores.min():.4f}..{scores.max():.4f}, maps {maps.min():.4f}..{maps.max():.4f})"
        )
    verdict = "PASS" if worst <= TARGET else "FAIL"
    print(f"{verdict}: worst max|d| = {worst:.2e} (target <= {TARGET:.0e})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
