"""The frozen DINOv2 backbone (a vision-only family beside CLIP).

The architecture is the DINOv2 reference code's ``DinoVisionTransformer`` as its ``torch.hub`` builders
configure it (``hubconf``: img_size 518, patch 14, LayerScale, LayerNorm eps 1e-6, qkv bias, GELU MLP or
the fused SwiGLU of ViT-g/14), written here with the same parameter names so the released
``dinov2_*_pretrain.pth`` files load strictly. Two facts shape the features and are kept exactly:

* the positional embedding is resized on every forward, bicubic, with ``scale_factor=(g + offset) / 37``
  rather than ``size=g`` (offset 0.1, no antialias; the register variants use offset 0 and antialias),
  which gives other values than a plain ``size=`` resize;
* attention is ``scaled_dot_product_attention`` (the reference code's path without xFormers).

Methods reach it only through :meth:`FrozenDINOv2.patch_tokens` (what
:class:`~anomaly_vlm.backbones.capabilities.BackboneCapabilities` declares); it has no text tower.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.capabilities import BackboneCapabilities
from anomaly_vlm.backbones.precision import (
    MIXED_PRECISIONS,
    PURE_PRECISIONS,
    BackbonePrecision,
    use_mixed_precision,
)
from anomaly_vlm.backbones.weights import WeightsNotFoundError, weights_identity

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Where the reference code's hub builders download the LVD-142M weights from.
WEIGHTS_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
#: The one weight tag the reference code publishes.
WEIGHT_TAGS = ("lvd142m",)
_NETWORK_PROBE_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class DINOv2Arch:
    """One ``torch.hub`` builder's architecture (``dinov2/hub/backbones.py``)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglufused"
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    img_size: int = 518
    patch_size: int = 14
    mlp_ratio: float = 4.0


def _arch(embed: int, depth: int, heads: int, ffn: str = "mlp", registers: bool = False) -> DINOv2Arch:
    if registers:
        return DINOv2Arch(embed, depth, heads, ffn, 4, True, 0.0)
    return DINOv2Arch(embed, depth, heads, ffn)


#: ``backbone.model`` values: the hub builders' names, plus a tiny architecture for tests and demos.
ARCHITECTURES: dict[str, DINOv2Arch] = {
    "dinov2_vits14": _arch(384, 12, 6),
    "dinov2_vitb14": _arch(768, 12, 12),
    "dinov2_vitl14": _arch(1024, 24, 16),
    "dinov2_vitg14": _arch(1536, 40, 24, "swiglufused"),
    "dinov2_vits14_reg": _arch(384, 12, 6, registers=True),
    "dinov2_vitb14_reg": _arch(768, 12, 12, registers=True),
    "dinov2_vitl14_reg": _arch(1024, 24, 16, registers=True),
    "dinov2_vitg14_reg": _arch(1536, 40, 24, "swiglufused", registers=True),
    # Random weights only: 4 blocks of width 64, same patch size, native size and resize as ViT-S/14.
    "anomaly-vlm-tiny-dinov2": _arch(64, 4, 4),
}


def architecture(model: str) -> DINOv2Arch:
    """The architecture of ``backbone.model=<model>``.

    Raises:
        ValueError: not a DINOv2 model name.
    """
    try:
        return ARCHITECTURES[model]
    except KeyError:
        raise ValueError(
            f"backbone.model='{model}' is not a DINOv2 model; one of {sorted(ARCHITECTURES)}"
        ) from None


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, length, width))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    """The reference code's ``SwiGLUFFNFused`` (hidden width rounded as it rounds it)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class _LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, arch: DINOv2Arch) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, arch.num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * arch.mlp_ratio)
        self.mlp = _SwiGLU(dim, hidden) if arch.ffn == "swiglufused" else _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, arch: DINOv2Arch) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, arch.embed_dim, kernel_size=arch.patch_size, stride=arch.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """The reference ``DinoVisionTransformer`` at inference (parameter names as in its state dict)."""

    def __init__(self, arch: DINOv2Arch) -> None:
        super().__init__()
        self.arch = arch
        dim = arch.embed_dim
        grid = arch.img_size // arch.patch_size
        self.patch_embed = _PatchEmbed(arch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, arch.num_register_tokens, dim)) if arch.num_register_tokens else None
        )
        self.blocks = nn.ModuleList(_Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference init (timm's ViT init); only random-weight runs see it.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> Tensor:
        """``[1, 1 + h*w, W]`` positional embedding for a patch grid ``(h, w)``, resized as the reference
        resizes it."""
        arch = self.arch
        pos_embed = self.pos_embed
        count = pos_embed.shape[1] - 1
        side = int(math.sqrt(count))
        if grid[0] * grid[1] == count and grid[0] == grid[1]:
            return pos_embed
        pos = pos_embed.float()
        kwargs: dict = {}
        if arch.interpolate_offset:
            # The reference's historical offset: sizes come from a scale factor, not from ``size=``.
            kwargs["scale_factor"] = (
                float(grid[0] + arch.interpolate_offset) / side,
                float(grid[1] + arch.interpolate_offset) / side,
            )
        else:
            kwargs["size"] = grid
        patch = F.interpolate(
            pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=arch.interpolate_antialias,
            **kwargs,
        )
        if tuple(patch.shape[-2:]) != tuple(grid):
            raise ValueError(f"positional embedding resized to {tuple(patch.shape[-2:])}, not {grid}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([pos[:, :1], patch], dim=1).to(pos_embed.dtype)

    def tokens(self, pixels: Tensor) -> Tensor:
        """Patch embedding, CLS, positional embedding, then the registers: ``[B, 1 + R + N, W]``."""
        grid = (pixels.shape[-2] // self.arch.patch_size, pixels.shape[-1] // self.arch.patch_size)
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(grid)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x


def weight_file_name(model: str) -> str:
    """The reference code's file name of the LVD-142M weights of ``model``."""
    return f"{model}_pretrain.pth"


def weight_url(model: str) -> str:
    """Where the reference code's hub builder downloads ``model``'s weights."""
    base = model.removesuffix("_reg")
    return f"{WEIGHTS_BASE_URL}/{base}/{weight_file_name(model)}"


def _cache_folders(cache_dir: str | os.PathLike | None) -> list[Path]:
    folders = [Path(cache_dir).expanduser()] if cache_dir else []
    # torch.hub's own download folder, where the reference code (and AnomalyDINO) put these files.
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    return folders


def _reachable(url: str, timeout: float = _NETWORK_PROBE_SECONDS) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(url).hostname
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])


def resolve_dinov2_weights(
    model: str, pretrained: str | None, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """The local weight file of ``pretrained`` for DINOv2 ``model`` (None: random initialisation).

    Order: an existing file path; ``lvd142m`` in ``cache_dir`` or torch.hub's checkpoint folder; a
    download there when reachable. Fails fast with :class:`WeightsNotFoundError` otherwise.
    """
    if pretrained is None or str(pretrained).lower() in {"", "none", "null"}:
        return None
    pretrained = str(pretrained)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if pretrained.lower() not in WEIGHT_TAGS:
        if os.sep in pretrained or pretrained.endswith((".pth", ".pt", ".safetensors")):
            raise WeightsNotFoundError(f"backbone.pretrained file does not exist: {pretrained}")
        raise ValueError(
            f"backbone.pretrained='{pretrained}' is neither a file nor a DINOv2 weight tag "
            f"({list(WEIGHT_TAGS)})"
        )
    if model not in ARCHITECTURES or model.startswith("anomaly-vlm-"):
        raise ValueError(f"backbone.model='{model}' has no released weights; use backbone.pretrained=null")
    folders = _cache_folders(cache_dir)
    for folder in folders:
        candidate = folder / weight_file_name(model)
        if candidate.is_file():
            return candidate
    url = weight_url(model)
    searched = ", ".join(str(folder) for folder in folders)
    fix = (
        "  Fix one of:\n"
        "    - on a machine with network, run `make weights`, then copy the files here (same folder);\n"
        f"    - point to a local file: `backbone.pretrained=/path/to/{weight_file_name(model)}`;\n"
        "    - for a smoke test without weights: `backbone=dinov2_tiny` or `backbone.pretrained=null`."
    )
    if not _reachable(url):
        raise WeightsNotFoundError(
            f"DINOv2 weights '{model}' ({pretrained}) are not available: no cached copy and no network.\n"
            f"  Searched: {searched}\n{fix}"
        )
    target = folders[0] / weight_file_name(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as error:  # network errors come in many types; the user needs one message
        raise WeightsNotFoundError(f"DINOv2 weights '{model}': download failed ({error})\n{fix}") from error
    return target


def load_dinov2_weights(vit: DinoViT, weight_file: str | os.PathLike) -> None:
    """Load a reference-format state dict strictly, without running code from the file."""
    from anomaly_vlm.untrusted import load_torch_file

    if str(weight_file).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(weight_file))
    else:
        state = load_torch_file(weight_file, what=f"backbone.pretrained={weight_file}")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    vit.load_state_dict(state, strict=True)


class FrozenDINOv2(BackbonePrecision, nn.Module):
    """A frozen DINOv2 ViT (reference architecture) that gives patch tokens at chosen blocks.

    Args:
        model: a key of :data:`ARCHITECTURES` (``dinov2_vits14``, ``dinov2_vitb14_reg``, ...).
        pretrained: ``lvd142m`` (the released weights), a local ``.pth``/``.safetensors`` file in the
            reference format, or None for a random init seeded by ``seed``.
        image_size: square input size, a multiple of 14 (AnomalyDINO: 448 few-shot, 672 batched); with the
            aspect-preserving data geometry, the inputs' shorter side (:meth:`input_grid`).
        cache_dir: folder searched for (and given) the weight files before torch.hub's own.
        seed: seed of the random initialisation when ``pretrained`` is None.
        mean, std: normalisation (ImageNet's by default, as every DINOv2 release uses).
        precision: ``fp32`` (the published AnomalyDINO runs); pure ``fp16`` / ``bf16`` (weights and stream
            in that type); mixed ``amp-bf16`` / ``amp-fp16`` (float32 stream, norms and accumulations,
            matmul operands in the low type, as :class:`~anomaly_vlm.backbones.clip.FrozenCLIP`); ``auto``:
            see :func:`~anomaly_vlm.backbones.precision.resolve_precision`.
        precision_device: ``cpu`` or ``cuda``, the device ``auto`` decides for (None: a visible GPU).
        release_precision: the method's official GPU precision, what ``auto`` picks on a GPU.
        patch_size: the architecture's patch size, stated in the config so that other keys can follow it
            (``datamodule.crop_multiple``); checked, None: not stated.
    """

    capabilities: ClassVar[BackboneCapabilities] = BackboneCapabilities(
        family="DINOv2", text_tower=False, patch_tokens=True, clip_tokens=False
    )
    #: How ``make weights`` resolves (and downloads) this family's weights.
    weight_resolver = staticmethod(resolve_dinov2_weights)

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        image_size: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        precision: str = "fp32",
        precision_device: str | None = None,
        release_precision: str | None = None,
        patch_size: int | None = None,
    ) -> None:
        super().__init__()
        precision = self._resolve_precision(precision, precision_device, release_precision)
        arch = architecture(model)
        if patch_size is not None and int(patch_size) != arch.patch_size:
            raise ValueError(
                f"backbone.patch_size={patch_size}, but {model} has patches of {arch.patch_size}"
            )
        self.model_name = model
        self.pretrained = pretrained
        weight_file = resolve_dinov2_weights(model, pretrained, cache_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vit = DinoViT(arch)
        if weight_file is not None:
            log.info("Loading %s weights from %s", model, weight_file)
            load_dinov2_weights(vit, weight_file)
        if precision in MIXED_PRECISIONS:
            use_mixed_precision(vit, MIXED_PRECISIONS[precision])
        else:
            vit = vit.to(PURE_PRECISIONS[precision])
        self.vit = vit
        self.identity = weights_identity(model, pretrained, seed)
        if precision != "fp32":
            self.identity += f":{precision}"
        self.patch_size = arch.patch_size
        self.image_size = int(image_size or arch.img_size)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"backbone.image_size={self.image_size} is not a multiple of patch size {self.patch_size}"
            )
        side = self.image_size // self.patch_size
        self.grid_size = (side, side)
        self.register_buffer(
            "pixel_mean",
            torch.tensor(mean or IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "pixel_std",
            torch.tensor(std or IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False,
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenDINOv2:
        return super().train(False)

    @staticmethod
    def config_depths(node) -> tuple[int, int] | None:
        """(vision blocks, text blocks) of a backbone config node, without building it (no text: 0)."""
        arch = ARCHITECTURES.get(str(node.get("model")))
        return None if arch is None else (arch.depth, 0)

    @staticmethod
    def config_patch_size(node) -> int | None:
        """Patch size of a backbone config node, without building it."""
        arch = ARCHITECTURES.get(str(node.get("model")))
        return None if arch is None else arch.patch_size

    @property
    def width(self) -> int:
        return int(self.vit.arch.embed_dim)

    @property
    def num_layers(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def dtype(self) -> torch.dtype:
        """Type of the activations between blocks: float32 in fp32 and mixed modes, else the weights'."""
        return self.vit.cls_token.dtype

    def _run_in(self, precision: str) -> None:
        if precision in MIXED_PRECISIONS:
            use_mixed_precision(self.vit, MIXED_PRECISIONS[precision])
        else:
            self.vit.to(PURE_PRECISIONS[precision])

    @property
    def positional_embedding(self) -> Tensor:
        """``[1 + N, W]`` positional embedding as resized for this backbone's input size."""
        return self.vit.interpolate_pos_encoding(self.grid_size)[0]

    def normalize(self, images: Tensor) -> Tensor:
        """``[0, 1]`` RGB to the backbone's normalised input."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def denormalize(self, pixels: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return pixels * self.pixel_std.to(pixels.dtype) + self.pixel_mean.to(pixels.dtype)

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        """Validate 1-based block indices."""
        layers = [int(layer) for layer in layers]
        bad = [layer for layer in layers if not 1 <= layer <= self.num_layers]
        if bad:
            raise ValueError(f"layers {bad} outside 1..{self.num_layers} of backbone '{self.model_name}'")
        return layers

    def input_grid(self, images: Tensor) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of ``[B, 3, H, W]`` inputs.

        Square ``image_size`` inputs give :attr:`grid_size`. Non-square inputs (the aspect-preserving
        ``datamodule.geometry=shorter_side``) are taken when their shorter side is ``image_size`` and both
        sides are multiples of the patch size, as the reference code takes any such size (its positional
        embedding resized to that grid).

        Raises:
            ValueError: any other size (``data.image_size`` differs from ``backbone.image_size``).
        """
        height, width = (int(side) for side in images.shape[-2:])
        patch = self.patch_size
        if min(height, width) != self.image_size or height % patch or width % patch:
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} inputs (or, non-square, a shorter side of "
                f"{self.image_size} and both sides multiples of {patch}), got {(height, width)}; "
                "data.image_size must equal backbone.image_size"
            )
        return height // patch, width // patch

    def patch_tokens(
        self,
        images: Tensor,
        blocks: Sequence[int] | None = None,
        norm: bool = True,
        normalized: bool = False,
    ) -> dict[int, Tensor]:
        """Patch tokens ``[B, N, W]`` at the given blocks (1-based; None = the last), CLS and registers
        removed, after the final LayerNorm when ``norm`` (the reference's ``get_intermediate_layers``);
        float32 whatever the precision, as CLIP's features (they meet the methods' float32 memories).

        Args:
            images: ``[B, 3, S, S]`` RGB in ``[0, 1]`` (or already normalised with ``normalized=True``);
                non-square ``[B, 3, H, W]`` with ``min(H, W) = S`` and both sides multiples of the patch size
                give an ``h x w`` grid (:meth:`input_grid`), ``N = h * w`` in raster order.
            blocks: blocks whose outputs are returned.
            norm: apply the model's final ``norm`` to each (as ``get_intermediate_layers(norm=True)``).
            normalized: the images are already normalised.
        """
        self.input_grid(images)
        taps = set(self.check_layers(blocks if blocks is not None else [self.num_layers]))
        pixels = images if normalized else self.normalize(images)
        vit = self.vit
        x = vit.tokens(pixels.to(self.dtype))
        skip = 1 + vit.arch.num_register_tokens
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(vit.blocks, start=1):
            x = block(x)
            if index in taps:
                outputs[index] = (vit.norm(x) if norm else x)[:, skip:].float()
            if index >= max(taps):
                break
        return outputs

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name}, weights={self.identity}, "
            f"image_size={self.image_size}, grid={self.grid_size}"
        )
