"""A stand-in frozen-feature extractor and image files for the feature-cache tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.cache import file_digest


def fake_backbone(identity: str = "fake:random:seed0", image_size: int = 16) -> SimpleNamespace:
    """What the cache reads from a FrozenCLIP: names, input size, positional embedding, normalisation."""
    return SimpleNamespace(
        model_name="fake",
        identity=identity,
        image_size=image_size,
        positional_embedding=torch.arange(10.0).reshape(5, 2),
        pixel_mean=torch.tensor([0.5, 0.5, 0.5]),
        pixel_std=torch.tensor([0.25, 0.25, 0.25]),
    )


class FakeExtractor:
    """A deterministic ``frozen_features`` that counts the images it encodes (and can be slow)."""

    cacheable = True

    def __init__(self, spec: dict | None = None, backbone=None, delay: float = 0.0, log: Path | None = None):
        self.backbone = backbone or fake_backbone()
        self.spec = spec or {"taps": [1, 2]}
        self.delay = delay
        self.log = log
        self.calls = 0
        self.images_encoded = 0

    def feature_spec(self) -> dict:
        return dict(self.spec)

    def frozen_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.images_encoded += len(images)
        if self.log is not None:
            with open(self.log, "a") as handle:  # appends of one short line are atomic
                handle.write(f"{os.getpid()} {len(images)}\n")
        if self.delay:
            time.sleep(self.delay)
        flat = images.flatten(1)
        return {
            "tokens": (flat * 3.0 + 0.1234567).reshape(len(images), 3, -1),
            "global": flat.mean(dim=1, keepdim=True) / 3.0,
        }


def write_images(folder: Path, count: int, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, list[str]]:
    """``count`` random PNG files; returns their pixels ``[count, 3, size, size]`` and content digests."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels, digests = [], []
    for index in range(count):
        array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        path = folder / f"{index:03d}.png"
        Image.fromarray(array).save(path)
        pixels.append(torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1))
        digests.append(file_digest(path))
    return torch.stack(pixels), digests


@pytest.fixture
def images(tmp_path) -> tuple[torch.Tensor, list[str]]:
    return write_images(tmp_path / "images", 6)


@pytest.fixture
def make_extractor():
    """``FakeExtractor`` (a fixture: test modules here cannot import conftest by name)."""
    return FakeExtractor


@pytest.fixture
def make_backbone():
    return fake_backbone


@pytest.fixture
def make_images():
    return write_images
