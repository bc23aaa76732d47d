"""Serve anomalib's WinCLIP (the peer implementation) to ``bench.parity.winclip`` / ``bench.perf.winclip``.

Runs inside the side environment made by ``make parity-venv`` (anomalib with its ``[clip]`` extra and
``open_clip_torch==2.24.0``; newer open_clip releases break anomalib's window path). It reads one JSON
command per line on stdin and answers one JSON line on stdout, so the caller can interleave timings of
both implementations on the same machine:

- ``{"cmd": "load", "weights": file, "class_name": name, "text_out": file | null, "config": file}``:
  build ``WinClipModel`` with the given CLIP state dict (no download), collect (and optionally save)
  the text embeddings of ``class_name``; ``config`` (optional) is an open_clip model config (JSON) the
  CLIP is built from instead of ViT-B-16-plus-240 (a narrow one for quick checks);
- ``{"cmd": "references", "images": file | null}``: few-shot memory from already-normalised images;
- ``{"cmd": "forward", "images": file, "out": file | null, "precision": "fp32" | "amp-bf16"}``: score
  already-normalised images (``amp-bf16``: under ``torch.autocast("cpu", torch.bfloat16)``), answer the
  wall time and optionally save ``{"scores", "maps"}`` (float32);
- ``{"cmd": "trim"}``: hand freed heap memory back to the system (glibc's ``malloc_trim``), before the
  caller samples this process's resident set during a timed call;
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from unittest import mock

import open_clip
import torch


def release_freed_memory() -> None:
    """glibc's ``malloc_trim``: freed heap memory back to the system."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def build(weights: str, class_name: str, config: str | None = None):
    from anomalib.models.image.winclip import torch_model

    create = open_clip.create_model_and_transforms
    if config:
        open_clip.add_model_config(config)

    def without_download(name, pretrained=None, **kwargs):
        return create(Path(config).stem if config else name, pretrained=None, **kwargs)

    with mock.patch.object(torch_model.open_clip, "create_model_and_transforms", without_download):
        model = torch_model.WinClipModel(class_name=None, scales=(2, 3), apply_transform=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.clip.load_state_dict(state, strict=False)
    model.eval()
    model.setup(class_name)
    return model, {"missing": list(missing), "unexpected": list(unexpected)}


def main() -> None:
    torch.set_grad_enabled(False)
    model = None
    for line in sys.stdin:
        command = json.loads(line)
        reply: dict = {"ok": True}
        name = command["cmd"]
        if name == "load":
            model, keys = build(command["weights"], command["class_name"], command.get("config"))
            reply.update(
                keys,
                anomalib=version("anomalib"),
                open_clip=version("open_clip_torch"),
                torch=torch.__version__,
            )
            if command.get("text_out"):
                torch.save(model.text_embeddings, command["text_out"])
        elif name == "references":
            if command["images"] is None:
                model.k_shot = 0
            else:
                images = torch.load(command["images"], weights_only=True)
                started = time.perf_counter()
                model.setup(reference_images=images)
                reply["seconds"] = time.perf_counter() - started
        elif name == "forward":
            images = torch.load(command["images"], weights_only=True)
            precision = command.get("precision", "fp32")
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if precision == "amp-bf16"
                else contextlib.nullcontext()
            )
            started = time.perf_counter()
            with autocast:
                output = model(images)
            reply["seconds"] = time.perf_counter() - started
            if command.get("out"):
                outputs = {"scores": output.pred_score.float(), "maps": output.anomaly_map.float()}
                torch.save(outputs, command["out"])
        elif name == "trim":
            release_freed_memory()
        elif name == "quit":
            print(json.dumps(reply), flush=True)
            return
        else:
            reply = {"ok": False, "error": f"unknown command {name!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
