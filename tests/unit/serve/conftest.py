"""Saved tiny-CLIP detectors (64 px) for the service's tests, built once per session."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from composed import compose_config
from omegaconf import OmegaConf
from PIL import Image

from anomaly_vlm.decisions.thresholds import CategoryThresholds
from anomaly_vlm.deploy.detector import save_detector
from anomaly_vlm.tasks.instantiate import build

SIZE = 64
TWO = ("prompts=two_prompt",)


def wait_ready(client, limit_s: float = 120.0) -> None:
    """Poll ``/readyz`` until the warm-up pass is done.

    The limit is generous on purpose: on a loaded 2-core machine an ONNX session's first pass can take
    several seconds, and a predict sent before then is answered 503 (warming up), as it should be.
    """
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"the service was not ready within {limit_s:g} s")


def make_detector(
    root: Path, method_name: str, shots: int, *extra: str, thresholds: bool = True, freeze: bool = True
) -> Path:
    """A saved detector of category ``widget``: tiny CLIP at 64 px, ``shots`` random references."""
    overrides = ["backbone=tiny", f"backbone.image_size={SIZE}", f"paths.output_dir={root / 'run'}"]
    overrides += [f"paths.cache_dir={root / 'cache'}", f"method={method_name}", f"shots={shots}", *extra]
    cfg = compose_config("train", overrides)
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=shots, text_cache_dir=None
    )
    generator = torch.Generator().manual_seed(1)
    references = torch.rand(shots, 3, SIZE, SIZE, generator=generator) if shots else None
    method.setup_category("widget", references)
    with torch.no_grad():
        scored = method.predict_images(
            torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
        )
    chosen = None
    if thresholds:
        scores, maps = scored.image_score, scored.anomaly_map
        chosen = CategoryThresholds(
            image=float(scores.median()),
            pixel=float(maps.flatten().quantile(0.9)),
            method="fixed",
            source="given",
        )
    accept = "accept" if method.transductive or not freeze else "refuse"
    folder = root / f"{method_name}-{shots}"
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return save_detector(
        folder,
        method,
        "widget",
        config,
        chosen,
        method_name,
        scored if freeze else None,
        set_dependence=accept,
    )


@pytest.fixture(scope="session")
def detectors(tmp_path_factory) -> dict[str, Path]:
    """``clip`` (zero-shot, thresholds) and ``aprillab`` (2-shot, frozen set statistics)."""
    root = tmp_path_factory.mktemp("detectors")
    return {
        "clip": make_detector(root, "clip", 0, *TWO),
        "aprillab": make_detector(root, "aprillab", 2, *TWO),
    }


@pytest.fixture(scope="session")
def set_dependent(tmp_path_factory):
    """``name -> folder`` of detectors whose scores depend on the images scored together, each built on
    first use: ``musc`` (transductive), ``aprillab_open`` (2-shot, set statistics not frozen)."""
    root = tmp_path_factory.mktemp("set-dependent")
    recipes = {
        "musc": lambda: make_detector(root, "musc", 0, thresholds=False),
        "aprillab_open": lambda: make_detector(root, "aprillab", 2, *TWO, freeze=False),
    }
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = recipes[name]()
        return built[name]

    return get


def png_bytes(seed: int, size: tuple[int, int] = (90, 70), fmt: str = "PNG") -> bytes:
    """A random RGB image file's bytes (``size`` = width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()
