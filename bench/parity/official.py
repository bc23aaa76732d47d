"""Shared pieces of the parity harnesses: where the official code is, how it is imported, shared inputs.

The official repositories are imported from a checkout given at run time, never copied here. Their code
is used unmodified; what this module adds only makes it runnable on a CPU-only machine with current
packages, and is applied by the harness process alone:

* the checkout (and any folder the release expects on ``sys.path``) is importable only while its
  modules import (:func:`official_imports`), optionally from inside the checkout and with stand-ins for
  packages it imports for logging or plots only;
* ``.cuda()`` / ``.to("cuda")`` calls inside the official forward passes are redirected to the CPU when
  no GPU is present (:func:`cpu_device_moves`);
* ``pkg_resources`` (removed from recent setuptools) is provided as a stub that re-exports
  ``packaging``, the only thing the official files take from it (:func:`shim_pkg_resources`).

The APRIL-GAN, AnomalyCLIP and AdaCLIP harnesses give both sides the same random weights of a shrunk
ViT-L-14-336 (official depth 24 and taps, small widths) at 518 px, so the 24 -> 37 positional-embedding
resize is exercised (:func:`small_vit_l14_336`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import TARGET_ABS, ParityReport


@dataclass(frozen=True)
class OfficialCode:
    """Where a method's official code comes from: a checkout of its repository.

    Attributes:
        url: The repository to clone.
        variable: The make variable (and environment variable) that names the checkout.
        marker: A file every checkout holds, relative to its root.
    """

    url: str
    variable: str
    marker: str
    metavar = "DIR"

    @property
    def help(self) -> str:
        return f"checkout of {self.url} (default: ${self.variable})"

    def resolve(self, value: str | None, method: str) -> tuple[Path, dict[str, Any]]:
        """The checkout given by ``--official`` (or the environment variable) and its description
        (:func:`describe_checkout`); exits 2 when it is missing."""
        value = value or os.environ.get(self.variable)
        get = f"get the official code with: git clone {self.url}"
        if not value:
            print(
                f"error: no official checkout: pass --official DIR "
                f"(make parity-{method} {self.variable}=DIR); {get}",
                file=sys.stderr,
            )
            raise SystemExit(2)
        folder = Path(value).expanduser().resolve()
        if not (folder / self.marker).is_file():
            print(
                f"error: --official {value} is not a checkout of {self.url} (no {self.marker} in it); {get}",
                file=sys.stderr,
            )
            raise SystemExit(2)
        return folder, describe_checkout(folder)


def describe_checkout(folder: Path) -> dict[str, Any]:
    """``{"folder": ..., "commit": ...}``; the commit is None when the folder is not a git checkout."""
    commit = None
    if (folder / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
            )
            if result.returncode == 0 and result.stdout.strip():
                commit = result.stdout.strip()
    return {"folder": str(folder), "commit": commit}


def shim_pkg_resources() -> None:
    """A ``pkg_resources`` exposing ``packaging`` when setuptools no longer ships one."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    import packaging.version  # noqa: F401  (the attribute the official files read)

    stub = types.ModuleType("pkg_resources")
    stub.packaging = sys.modules["packaging"]
    sys.modules["pkg_resources"] = stub


def logging_stub(name: str) -> dict[str, Any]:
    """Attributes of a stand-in for a logging package (``from loguru import logger`` works on it)."""
    return {"logger": logging.getLogger(f"official.{name}")}


#: Top-level modules that an official checkout's import block loaded, and the checkout they came from.
_LOADED_BY_CHECKOUT: dict[str, Path] = {}


def forget_clashing_modules(folder: Path, roots: list[Path]) -> None:
    """Drop from ``sys.modules`` the modules another official checkout loaded under a name that one of
    ``roots`` also defines (APRIL-GAN and AnomalyCLIP both have ``prompt_ensemble``), so that code from two
    checkouts can be imported in one process (``make bench-official``). Installed packages are never
    dropped: only what an earlier :func:`official_imports` block loaded."""
    for name, origin in list(_LOADED_BY_CHECKOUT.items()):
        if origin == folder or not any(
            (root / f"{name}.py").is_file() or (root / name).is_dir() for root in roots
        ):
            continue
        for loaded in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            if _defined_in(sys.modules[loaded], origin):
                sys.modules.pop(loaded)
        del _LOADED_BY_CHECKOUT[name]


def _defined_in(module: Any, folder: Path) -> bool:
    """Whether ``module`` was loaded from a file inside ``folder``. A checkout's import block may set the
    installed package of the same name aside and put it back afterwards (APRIL-GAN's bundled ``open_clip``),
    so the name alone does not say whose module ``sys.modules`` holds now."""
    location = getattr(module, "__file__", None)
    if location is None:  # namespace packages: their search path
        location = next(iter(getattr(module, "__path__", []) or []), None)
    if location is None:
        return False
    return Path(location).resolve().is_relative_to(Path(folder).resolve())


@contextlib.contextmanager
def official_imports(
    folder: Path,
    *,
    extra_paths: tuple[str, ...] = (),
    chdir: bool = False,
    stubs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[None]:
    """Make the official code in ``folder`` importable while the block runs; undone on exit.

    Args:
        folder: The checkout; first on ``sys.path``.
        extra_paths: Folders inside the checkout that the release puts on ``sys.path`` itself.
        chdir: Run the block from inside the checkout (releases that resolve files, or ``sys.path``
            entries, relative to the working directory).
        stubs: Packages the official modules import only for logging, spreadsheets or plots: each one
            that is not installed is an empty module with the given attributes while the block runs
            (removed afterwards: other libraries probe ``sys.modules`` for them).

    A missing dependency of the official code exits 2 with how to install it.
    """
    shim_pkg_resources()
    previous_cwd, previous_path = os.getcwd(), list(sys.path)
    stubbed = []
    for name, attributes in (stubs or {}).items():
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            sys.modules[name] = module
            stubbed.append(name)
    if chdir:
        os.chdir(folder)
    roots = [Path(folder), *(Path(folder) / path for path in extra_paths)]
    forget_clashing_modules(Path(folder), roots)
    sys.path[:0] = [str(root) for root in roots]
    before = set(sys.modules)
    try:
        yield
    except ModuleNotFoundError as error:
        print(
            f"error: the official code in {folder} imports '{error.name}', which is not installed; "
            'install the parity extra: pip install -e ".[parity]"',
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    finally:
        for name in set(sys.modules) - before:
            if "." not in name and name not in stubbed:
                _LOADED_BY_CHECKOUT.setdefault(name, Path(folder))
        os.chdir(previous_cwd)
        sys.path[:] = previous_path
        for name in stubbed:
            sys.modules.pop(name, None)


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


def shrunk_backbone(
    name: str, config: dict, folder: Path, image_size: int, settings: dict, precision: str = "fp32"
):
    """Our backbone on random weights the official side can load too.

    ``config`` is registered as ``name``; the model is built at its native 336 px with seed 0, its state
    dict saved to ``folder/weights.pt`` (the file the official code loads) and loaded back at
    ``image_size``, so the positional-embedding resize runs on load as in the official releases.
    ``precision`` is the loaded backbone's ``backbone.precision`` (the saved weights are float32).

    Returns:
        ``(backbone, state)``: our :class:`~anomaly_vlm.backbones.FrozenCLIP` and the saved state dict.
    """
    from anomaly_vlm.backbones.clip import FrozenCLIP

    register_config(name, config, folder)
    native = FrozenCLIP(name, None, image_size=336, quick_gelu=settings["quick_gelu"], seed=0)
    state = {key: value.clone() for key, value in native.clip.state_dict().items()}
    torch.save(state, folder / "weights.pt")
    loaded = FrozenCLIP(
        name, str(folder / "weights.pt"), image_size=image_size, precision=precision, **settings
    )
    return loaded, state


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


def official_aupro_line(
    report: ParityReport, official_fn, maps: np.ndarray, masks: np.ndarray, label: str
) -> None:
    """Our ``metrics.aupro=official`` against the official repository's own AUPRO on the same maps."""
    from anomaly_vlm.metrics.functional import ScoreSplit, official_aupro

    theirs = float(official_fn(masks.astype(np.float32), maps.astype(np.float32)))
    ours = official_aupro(ScoreSplit.from_maps(maps, masks))
    report.note(f"  AUPRO ({label}): official {theirs:.6f}, ours (metrics.aupro=official) {ours:.6f}")
    report.add(f"AUPRO official variant ({label})", abs(ours - theirs), 1e-6)


__all__ = [
    "TARGET_ABS",
    "OfficialCode",
    "blob_masks",
    "cpu_device_moves",
    "describe_checkout",
    "logging_stub",
    "max_abs",
    "max_rel",
    "official_aupro_line",
    "official_imports",
    "register_config",
    "shim_pkg_resources",
    "small_vit_l14_336",
    "smooth_images",
]
