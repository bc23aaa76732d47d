"""The frozen open_clip backbone shared by every method.

One wrapper serves all methods, so facts about CLIP live here once: how weights are found, how the
positional embedding is stretched to another input size, how images are normalised, and which tokens
come out of which block. Methods never reach into open_clip themselves except through the small
token-level API below (``embed_patches`` / ``run_blocks`` / ``pool``), which is what window-based
(WinCLIP) and stream-based (AnomalyCLIP's DPAM) methods need.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.weights import resolve_weights, weights_identity

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


@contextlib.contextmanager
def _quiet_root_logger():
    """Silence open_clip's 'initialized randomly' warning: we load weights ourselves right after."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def register_package_model_configs() -> None:
    """Make the model configs shipped in the package (e.g. ``anomaly-vlm-tiny``) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_MODEL_CONFIG_DIR)
        _registered = True


@dataclass
class ImageFeatures:
    """Outputs of :meth:`FrozenCLIP.encode_image`.

    Attributes:
        global_embedding: ``[B, D]`` projected CLS embedding (ln_post then proj), not normalised.
        patch_tokens: ``[B, N, W]`` final patch tokens after ln_post, unprojected, CLS removed.
        layer_tokens: block index (1-based) -> ``[B, 1 + N, W]`` raw residual stream at that block's
            output (no ln_post, no proj), CLS first so a method can drop or keep it.
    """

    global_embedding: Tensor
    patch_tokens: Tensor
    layer_tokens: dict[int, Tensor] = field(default_factory=dict)


def interpolate_positional_embedding(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    mode: str = "bicubic",
    align_corners: bool = False,
    antialias: bool = False,
) -> Tensor:
    """Resize a ``[1 + H*W, C]`` ViT positional embedding to ``new_grid`` (CLS entry kept as is).

    ``antialias`` matters even when upsampling: torch's antialiased bicubic uses a different kernel
    (the one of PIL) than plain bicubic, so 24 -> 37 grids differ by ~1e-2 between the two.
    """
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    old = int(round(grid_pos.shape[0] ** 0.5))
    if old * old != grid_pos.shape[0]:
        raise ValueError(f"positional embedding of {grid_pos.shape[0]} patch entries is not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    grid = grid_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    kwargs = {} if mode in {"nearest", "area"} else {"align_corners": align_corners}
    if antialias:
        if mode not in {"bilinear", "bicubic"}:
            raise ValueError(f"pos-embed antialias needs mode bilinear or bicubic, got '{mode}'")
        kwargs["antialias"] = True
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, **kwargs)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=0)


class FrozenCLIP(nn.Module):
    """A frozen open_clip ViT CLIP with multi-layer token taps.

    Args:
        model: any open_clip model name (``ViT-B-16-plus-240``, ``ViT-L-14-336``,
            ``anomaly-vlm-tiny`` shipped with this package, ...).
        pretrained: open_clip tag, local weight file, or None for a random init seeded by ``seed``.
        image_size: input resolution; when it differs from the model's native size the positional
            embedding is interpolated with ``pos_embed_interpolation``.
        quick_gelu: build the model with QuickGELU (what OpenAI's weights were trained with). The
            APRIL-GAN release ran OpenAI weights with plain GELU, so this is a per-backbone choice.
        pos_embed_interpolation: ``bicubic`` (default) or ``bilinear`` etc., see ``F.interpolate``.
        pos_embed_antialias: resize with ``antialias=True``. Each official code base decides it: the
            APRIL-GAN release's bundled open_clip resizes bicubic WITH antialias (maps move by up to 0.1
            without it), AnomalyCLIP resizes bilinear without it; the backbone configs set the value of
            the method that uses them.
        cache_dir: Hugging Face cache folder to search/download weights into.
        seed: seed of the random initialisation when ``pretrained`` is None.
        mean, std: normalisation; defaults to the tag's values, else OpenAI's.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        image_size: int | None = None,
        quick_gelu: bool = False,
        pos_embed_interpolation: str = "bicubic",
        pos_embed_antialias: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        register_package_model_configs()
        model_name = model
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"backbone.model='{model_name}' is not an open_clip model. See open_clip.list_models()."
            )
        self.model_name = model_name
        self.pretrained = pretrained
        weight_file = resolve_weights(model_name, pretrained, cache_dir)
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(seed)
            # Built empty on purpose: weights are resolved above (fast offline failure) and loaded below.
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        if weight_file is not None:
            log.info("Loading %s weights from %s", model_name, weight_file)
            open_clip.load_checkpoint(model, str(weight_file))
        self.identity = weights_identity(model_name, pretrained, seed) + (":quickgelu" if quick_gelu else "")
        self.clip = model
        visual = model.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise ValueError(f"backbone '{model_name}' is not a ViT; only ViT CLIP backbones are supported")
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise ValueError(f"backbone '{model_name}' does not pool the CLS token; unsupported")
        self.patch_size = int(visual.patch_size[0])
        native_size = int(visual.image_size[0])
        self.image_size = int(image_size or native_size)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"backbone.image_size={self.image_size} is not a multiple of patch size {self.patch_size}"
            )
        side = self.image_size // self.patch_size
        self.grid_size = (side, side)
        if self.image_size != native_size:
            new_pos = interpolate_positional_embedding(
                visual.positional_embedding.data,
                self.grid_size,
                mode=pos_embed_interpolation,
                antialias=pos_embed_antialias,
            )
            visual.positional_embedding = nn.Parameter(new_pos)
            visual.image_size = (self.image_size, self.image_size)
            visual.grid_size = self.grid_size
        pcfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
        mean = mean or pcfg.get("mean") or OPENAI_MEAN
        std = std or pcfg.get("std") or OPENAI_STD
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.text_forward_passes = 0  # counted so caches can prove they avoid text encoding
        self.requires_grad_(False)
        self.eval()

    # The backbone never trains: keep dropout/patch-dropout off even inside a training loop.
    def train(self, mode: bool = True) -> FrozenCLIP:
        return super().train(False)

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def width(self) -> int:
        """Residual-stream width of the vision transformer."""
        return int(self.visual.conv1.out_channels)

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text embedding space."""
        return int(self.visual.proj.shape[1])

    @property
    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def normalize(self, images: Tensor) -> Tensor:
        """Map ``[0, 1]`` RGB images to the model's normalised input."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        """Validate 1-based block indices."""
        layers = [int(layer) for layer in layers]
        bad = [layer for layer in layers if not 1 <= layer <= self.num_layers]
        if bad:
            raise ValueError(f"layers {bad} outside 1..{self.num_layers} of backbone '{self.model_name}'")
        return layers

    def embed_patches(self, images: Tensor, normalized: bool = False) -> Tensor:
        """Patch embedding + CLS + positional embedding, before ``ln_pre``: ``[B, 1 + N, W]``."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} inputs, got {tuple(images.shape[-2:])}; "
                "data.image_size must equal backbone.image_size"
            )
        visual = self.visual
        pixels = images if normalized else self.normalize(images)
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + visual.positional_embedding.to(x.dtype)

    def run_blocks(
        self,
        tokens: Tensor,
        layers: Sequence[int] = (),
        apply_ln_pre: bool = True,
        last_block: int | None = None,
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Run ``ln_pre`` and all transformer blocks on batch-first tokens.

        Returns the last block's output (before ``ln_post``) and the outputs of the requested blocks
        (1-based). Works on any token count, which is what window methods need. ``last_block`` (1-based)
        stops after that block, for methods that finish the stream themselves.
        """
        visual = self.visual
        taps = set(self.check_layers(layers))
        if last_block is not None:
            self.check_layers([last_block])
        x = visual.ln_pre(tokens) if apply_ln_pre else tokens
        # open_clip >= 2.26 is batch-first; older releases stored LND. Handle both, never permute blindly.
        seq_first = not getattr(visual.transformer, "batch_first", True)
        if seq_first:
            x = x.transpose(0, 1)
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(visual.transformer.resblocks, start=1):
            if last_block is not None and index > last_block:
                break
            x = block(x)
            if index in taps:
                outputs[index] = x.transpose(0, 1) if seq_first else x
        if seq_first:
            x = x.transpose(0, 1)
        return x, outputs

    def pool(self, final_tokens: Tensor) -> Tensor:
        """CLS pooling of the last block's output: ``ln_post(x[:, 0]) @ proj`` -> ``[B, D]``."""
        return self.visual.ln_post(final_tokens[:, 0]) @ self.visual.proj

    def project(self, tokens: Tensor) -> Tensor:
        """Project width-``W`` tokens (already after ln_post) into the joint embedding space."""
        return tokens @ self.visual.proj

    def encode_image(
        self, images: Tensor, layers: Sequence[int] = (), normalized: bool = False
    ) -> ImageFeatures:
        """Encode ``[B, 3, H, W]`` images in ``[0, 1]`` (or already normalised with ``normalized=True``)."""
        tokens = self.embed_patches(images, normalized=normalized)
        final, taps = self.run_blocks(tokens, layers)
        final = self.visual.ln_post(final)
        return ImageFeatures(
            global_embedding=final[:, 0] @ self.visual.proj,
            patch_tokens=final[:, 1:],
            layer_tokens=taps,
        )

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(prompts))

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Encode sentences into ``[len(prompts), D]`` text embeddings (not normalised)."""
        device = self.visual.proj.device
        self.text_forward_passes += 1
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenize(prompts[start : start + batch_size]).to(device)
            chunks.append(self.clip.encode_text(tokens))
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=device)

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name}, weights={self.identity}, "
            f"image_size={self.image_size}, grid={self.grid_size}"
        )
