"""Fixtures of the methods' tests."""

from __future__ import annotations

import pytest

from anomaly_vlm.backbones import FrozenCLIP


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    """The tiny random CLIP at 128 px, one per test module (a test file may define its own instead)."""
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)
