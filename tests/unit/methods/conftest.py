"""Fixtures of the methods' tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_vlm.backbones import FrozenCLIP


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    """The tiny random CLIP at 128 px, one per test module (a test file may define its own instead)."""
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


@pytest.fixture(scope="session")
def held_out_sets(tmp_path_factory) -> Path:
    """The folder of the two synthetic sets of ``trained_methods.held_out_learning_run``: the first learning
    test of the session generates them, the others find them complete and only read them."""
    return tmp_path_factory.mktemp("held_out_sets")
