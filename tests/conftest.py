"""Shared fixtures: the tiny CLIP and the synthetic dataset, built once per test session."""

from __future__ import annotations

import atexit
import gc
import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network or the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# Parallel test workers (pytest-xdist, ``make test``) each get one torch thread, and so do the entry
# points they start: two workers with two threads each would fight over two cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"

# At exit, the interpreter's last garbage collections walk every object the session made (about 2 s per
# worker, measured); the process frees them anyway, so they go to the permanent generation first.
atexit.register(gc.freeze)

import anomaly_vlm.config  # noqa: E402,F401  (tests compose the Hydra config: the typed schema must be registered)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Test helpers shared by several folders (``from warm_python import run_python``).
sys.path.insert(0, str(REPO_ROOT / "tests"))


#: The tests that start entry points through ``tests/warm_python.py`` (a folder covers all its files);
#: ``tests/unit/test_warm_python.py`` holds this list complete.
WARM_SERVER_USERS = (
    "tests/integration",
    "tests/unit/test_warm_python.py",
    "tests/unit/tasks/test_training_lock.py",
)


def runs_warm_server_users(config) -> bool:
    """Whether this session's paths include a test of :data:`WARM_SERVER_USERS`."""
    root = Path(config.invocation_params.dir)
    for argument in config.args:
        path = (root / argument.split("::")[0]).resolve()
        for user in WARM_SERVER_USERS:
            user_path = REPO_ROOT / user
            if path == user_path or path in user_path.parents or user_path in path.parents:
                return True
    return False


def pytest_sessionstart(session):
    """Fork the warm interpreter of ``tests/warm_python.py`` from this process before it collects or runs
    anything, when the session includes tests that start entry points. Not in an xdist controller: it
    runs no test."""
    from warm_python import forking_enabled, shared_server

    config = session.config
    controller = getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")
    if forking_enabled() and not controller and runs_warm_server_users(config):
        shared_server().start()


@pytest.fixture(autouse=True)
def _torch_grad_mode_is_left_as_found():
    """A test that leaves autograd switched off fails itself, instead of the unrelated tests that run
    after it in the same worker (which then fail with "does not require grad", depending on the order)."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    leaked = torch.is_grad_enabled() != enabled
    torch.set_grad_enabled(enabled)
    assert not leaked, (
        "the test left torch's autograd mode changed (torch.set_grad_enabled without restoring)"
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A private cache folder (synthetic data, text embeddings) for the whole session."""
    return tmp_path_factory.mktemp("anomaly_vlm_cache")


@pytest.fixture(scope="session")
def tiny_backbone():
    from anomaly_vlm.backbones import FrozenCLIP

    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


@pytest.fixture(scope="session")
def synthetic_source(cache_dir):
    from anomaly_vlm.data.datasets import SyntheticAD

    return SyntheticAD(cache_dir / "synthetic")


@pytest.fixture(scope="session")
def read_offline_run():
    """The W&B offline-run reader of ``tests/wandb_offline.py`` (it parses W&B's internal log format,
    so it lives with the tests, not in the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "wandb_offline", Path(__file__).with_name("wandb_offline.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_offline_run


@pytest.fixture(scope="session")
def layouts():
    """``tests/benchmark_layouts.py``: builders of tiny copies of each benchmark's release layout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "benchmark_layouts", REPO_ROOT / "tests" / "benchmark_layouts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
