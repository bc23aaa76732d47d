"""Shared set-up of the WinCLIP parity check and benchmark against anomalib (the peer implementation).

Both implementations get the same random ``ViT-B-16-plus-240`` weights (a state dict written once to a
temporary folder) and the same already-normalised 240 x 240 inputs. anomalib runs in its own
environment (``make parity-venv``), driven line by line through ``winclip_anomalib_runner.py``.
Used by ``python -m bench.parity winclip`` and ``python -m bench.perf winclip``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.winclip import WinCLIPModel
from anomaly_vlm.prompts import PromptSet, TextEmbeddingCache
from bench import REPO_ROOT

RUNNER = Path(__file__).with_name("winclip_anomalib_runner.py")
CLASS_NAME = "bottle"
MODEL = "ViT-B-16-plus-240"


def default_peer_python() -> str:
    return os.environ.get("PARITY_PYTHON", str(REPO_ROOT / ".venv-parity" / "bin" / "python"))


class PeerInterpreter:
    """The official side of the WinCLIP check: the interpreter of the environment holding anomalib."""

    metavar = "PYTHON"
    help = (
        "interpreter of the environment with anomalib[clip] and open_clip_torch 2.24 "
        "(default: $PARITY_PYTHON, else .venv-parity/bin/python, made by `make parity-venv`)"
    )

    def resolve(self, value: str | None, method: str) -> tuple[str, dict[str, Any]]:
        """The interpreter to run anomalib with; exits 2 when it does not exist."""
        python = value or default_peer_python()
        if not Path(python).exists():
            print(
                f"error: peer interpreter {python} not found; run `make parity-venv` "
                "(or pass --official PYTHON, or set PARITY_PYTHON)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        return python, {"python": python}


def load_prompts() -> PromptSet:
    node = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "winclip_cpe.yaml"))
    node.pop("_target_")
    return PromptSet(**node)


def build_ours(
    seed: int = 0, model: str = MODEL, pretrained: str | None = None, precision: str = "fp32"
) -> tuple[FrozenCLIP, WinCLIPModel]:
    """Our WinCLIP on a randomly initialised ViT-B-16-plus-240 (or ``model``, or the weights file
    ``pretrained``) in ``backbone.precision`` ``precision``, with the paper's settings."""
    backbone = FrozenCLIP(model, pretrained, image_size=240, seed=seed, precision=precision)
    model = WinCLIPModel(backbone, scales=(2, 3), temperature=0.07).eval()
    classifier = TextEmbeddingCache(None).classifier(backbone, load_prompts(), CLASS_NAME, "raw_mean")
    model.set_text_classifier(classifier)
    return backbone, model


def normalized_images(backbone: FrozenCLIP, count: int, seed: int) -> torch.Tensor:
    """Smooth random images in [0, 1] (so windows differ from each other), normalised for the model."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 15, 15, generator=generator)
    fine = torch.rand(count, 3, 240, 240, generator=generator)
    images = 0.7 * torch.nn.functional.interpolate(coarse, size=240, mode="bilinear") + 0.3 * fine
    return backbone.normalize(images.clamp(0, 1))


class Peer:
    """anomalib's WinClipModel in its own interpreter, one JSON command per line."""

    def __init__(self, python: str) -> None:
        if not Path(python).exists():
            raise FileNotFoundError(
                f"peer interpreter {python} not found; run `make parity-venv` (or set PARITY_PYTHON)"
            )
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen(
            [python, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def call(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"anomalib runner died while handling {command['cmd']!r} (see its stderr)")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"anomalib runner: {reply}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, RuntimeError):
                self.call(cmd="quit")
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


@contextlib.contextmanager
def shared_setup(
    python: str, num_queries: int, shots: int, config: dict | None = None, precision: str = "fp32"
) -> Iterator[tuple]:
    """Both implementations on the same random weights and normalised inputs.

    ``config``: an open_clip model config to use instead of ViT-B-16-plus-240 (written to the scratch
    folder as ``<name>.json``; give its path to the peer's ``load``). ``precision``: our backbone's
    ``backbone.precision`` (the weights are made, and saved for the peer, in float32).

    Yields ``(backbone, ours, queries, references, peer, folder)``: our model, the anomalib process
    (``peer``) and a scratch folder holding ``weights.pt``, ``queries.pt`` and ``references.pt``.
    """
    with tempfile.TemporaryDirectory(prefix="winclip-peer-") as scratch:
        folder = Path(scratch)
        model = MODEL
        if config is not None:
            import open_clip

            model = "winclip-peer-small"
            (folder / f"{model}.json").write_text(json.dumps(config))
            open_clip.add_model_config(folder / f"{model}.json")
        backbone, ours = build_ours(model=model)
        torch.save(backbone.clip.state_dict(), folder / "weights.pt")
        if precision != "fp32":
            backbone, ours = build_ours(
                model=model, pretrained=str(folder / "weights.pt"), precision=precision
            )
        queries = normalized_images(backbone, num_queries, seed=1)
        references = normalized_images(backbone, shots, seed=2)
        torch.save(queries, folder / "queries.pt")
        torch.save(references, folder / "references.pt")
        peer = Peer(python)
        try:
            yield backbone, ours, queries, references, peer, folder
        finally:
            peer.close()
