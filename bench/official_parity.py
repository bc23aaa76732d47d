"""Shared pieces of the parity checks against official code (``parity_aprillab.py``, ``..._anomalyclip.py``).

The official repositories are imported from a checkout given at run time, never copied here. Their code
is used unmodified; what this module adds only makes it runnable on a CPU-only machine with current
packages, and is applied by the harness process alone:

* ``.cuda()`` / ``.to("cuda")`` calls inside the official forward passes are redirected to the CPU when
  no GPU is present (``cpu_device_moves``);
* ``pkg_resources`` (removed from recent setuptools) is provided as a stub that re-exports
  ``packaging``, the only thing the official files take from it (``shim_pkg_resources``).

Both sides get the same random weights of a shrunk ViT-L-14-336 (official depth 24 and taps, small
widths) at 518 px, so the 24 -> 37 positional-embedding resize is exercised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_ABS = 1e-4
TARGET_REL = 1e-4


def official_folder(value: str | None, variable: str, url: str, marker: str) -> Path:
    """The checkout given by ``--official`` / the make variable, or exit 2 with how to get it."""
    if not value:
        print(
            f"error: {variable} is not set. Get the official code with\n  git clone {url}\n"
            f"and run again with {variable}=<that folder>."
        )
        raise SystemExit(2)
    folder = Path(value).expanduser().resolve()
    if not (folder / marker).exists():
        print(f"error: {variable}={value} is not a checkout of {url} (no {marker} in it).")
        raise SystemExit(2)
    return folder


def shim_pkg_resources() -> None:
    """A ``pkg_resources`` exposing ``packaging`` when setuptools no longer ships one."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    import packaging.version  # noqa: F401  (the attribute the official files read)

    stub = types.ModuleType("pkg_resources")
    stub.packaging = sys.modules["packaging"]
    sys.modules["pkg_resources"] = stub


@contextlib.contextmanager
def official_imports(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the official modules import; a missing dependency exits 2."""
    shim_pkg_resources()
    sys.path.insert(0, str(folder))
    try:
        yield
    except ModuleNotFoundError as error:
        print(
            f"error: the official code in {folder} imports '{error.name}', which is not installed; "
            'install the parity extra: pip install -e ".[parity]"'
        )
        raise SystemExit(2) from None
    finally:
        sys.path.remove(str(folder))


@contextlib.contextmanager
def cpu_device_moves() -> Iterator[None]:
    """Redirect ``tensor.to('cuda')`` / ``tensor.cuda()`` to the CPU while official code runs GPU-less."""
    if torch.cuda.is_available():
        yield
        return
    original_to, original_cuda = torch.Tensor.to, torch.Tensor.cuda

    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.cuda = original_to, original_cuda


def small_vit_l14_336(vision_width: int, text_width: int, text_layers: int, embed_dim: int) -> dict:
    """An open_clip model config shaped like ViT-L-14-336 (24 blocks, patch 14, 336 px), narrower."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": vision_width, "patch_size": 14},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": text_layers,
        },
    }


def register_config(name: str, config: dict, folder: Path) -> None:
    """Make ``config`` known to (our) open_clip under ``name``."""
    import open_clip

    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


def max_abs(a, b) -> float:
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).double()
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).double()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max())


def max_rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |Δ| relative to the largest magnitude of the official tensor."""
    scale = float(theirs.detach().abs().max())
    return max_abs(ours.detach(), theirs.detach()) / (scale if scale > 0 else 1.0)


class Report:
    """Collects ``(quantity, delta, target, kind)`` rows; prints them and the verdict."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, str]] = []

    def add(self, name: str, delta: float, target: float = TARGET_ABS, kind: str = "abs") -> None:
        self.rows.append((name, delta, target, kind))
        status = "ok" if delta <= target else "MISS"
        print(f"  {name:44s} max|d| = {delta:.2e} ({kind}, target <= {target:.0e}) {status}", flush=True)

    def verdict(self) -> int:
        misses = [row for row in self.rows if not row[1] <= row[2]]
        if misses:
            print(
                f"FAIL: {len(misses)} of {len(self.rows)} quantities miss their target: "
                + ", ".join(r[0] for r in misses)
            )
            return 1
        worst = max(self.rows, key=lambda row: row[1] / row[2])
        print(f"PASS: all {len(self.rows)} quantities within target (closest: {worst[0]} {worst[1]:.2e})")
        return 0


def blob_masks(count: int, size: int, seed: int) -> torch.Tensor:
    """``[count, size, size]`` binary masks with a few elliptic regions each (the first image normal)."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(count, size, size)
    for index in range(1, count):
        for _ in range(1 + index % 3):
            cy, cx = (torch.rand(2, generator=generator) * size * 0.8 + size * 0.1).tolist()
            ry, rx = (torch.rand(2, generator=generator) * size * 0.12 + size * 0.03).tolist()
            masks[index][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1.0
    return masks


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Random images in ``[0, 1]`` with coarse structure, so patches differ from each other."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 12, 12, generator=generator)
    fine = torch.rand(count, 3, size, size, generator=generator)
    images = 0.7 * torch.nn.functional.interpolate(coarse, size=size, mode="bilinear") + 0.3 * fine
    return images.clamp(0, 1)


def official_aupro_line(report: Report, official_fn, maps: np.ndarray, masks: np.ndarray, label: str) -> None:
    """Our ``metrics.aupro=official`` against the official repository's own AUPRO on the same maps."""
    from anomaly_vlm.metrics.functional import ScoreSplit, official_aupro

    theirs = float(official_fn(masks.astype(np.float32), maps.astype(np.float32)))
    ours = official_aupro(ScoreSplit.from_maps(maps, masks))
    print(f"  AUPRO ({label}): official {theirs:.6f}, ours (metrics.aupro=official) {ours:.6f}")
    report.add(f"AUPRO official variant ({label})", abs(ours - theirs), 1e-6)
