"""The frozen open_clip backbone shared by every method.

One wrapper serves all methods, so facts about CLIP live here once: how weights are found, how the
positional embedding is stretched to another input size, how images are normalised, and which tokens
come out of which block. Methods never reach into open_clip themselves, only through the small
token-level API below (``embed_patches``, ``ln_pre``, ``blocks`` / ``run_block`` / ``run_blocks``,
``ln_post``, ``project`` / ``proj``, ``pool``, ``encode_dual_path`` for the V-V attention stream,
``encode_text_embeddings`` for learned prompt tokens), which is what window-based (WinCLIP),
stream-based (AnomalyCLIP's DPAM, PromptAD's V-V surgery) and prompt-learning methods need.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.capabilities import BackboneCapabilities
from anomaly_vlm.backbones.precision import (
    MIXED_PRECISIONS,
    PURE_PRECISIONS,
    BackbonePrecision,
    autocast_for,
    use_fast_attention,
    use_mixed_precision,
)
from anomaly_vlm.backbones.weights import load_weights, resolve_weights, weights_identity

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False
#: Weight precisions open_clip builds (``precision=`` of ``create_model``): linear/conv/attention weights
#: in that type, LayerNorms computed in float32 (``LayerNormFp32``), embeddings kept in float32. The
#: mixed modes and ``auto`` are in :mod:`anomaly_vlm.backbones.precision`.
PRECISIONS = PURE_PRECISIONS


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


@contextlib.contextmanager
def _quiet_open_clip_warnings():
    """Drop open_clip's 'initialized randomly' warning: we load weights ourselves right after.

    open_clip logs through the root logger itself; a filter on that logger drops only the records it
    creates (other loggers' records propagate past logger filters), and only while the model is built.
    """
    drop = _BelowWarning()
    logging.root.addFilter(drop)
    try:
        yield
    finally:
        logging.root.removeFilter(drop)


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


@dataclass
class DualPathFeatures:
    """Outputs of :meth:`FrozenCLIP.encode_dual_path`.

    Attributes:
        global_embedding: ``[B, D]`` ``ln_post(CLS) @ proj`` of the original (untouched) stream.
        vv_patch_embeddings: ``[B, N, D]`` patch tokens of the V-V stream after ``ln_post`` and ``proj``.
        layer_tokens: block (1-based) -> ``[B, 1 + N, W]`` original stream at that block's output.
        post_attention_tokens: block (1-based) -> ``[B, 1 + N, W]`` original stream inside that block,
            after its attention residual and before its MLP (``x + attn(ln_1(x))``).
    """

    global_embedding: Tensor
    vv_patch_embeddings: Tensor
    layer_tokens: dict[int, Tensor] = field(default_factory=dict)
    post_attention_tokens: dict[int, Tensor] = field(default_factory=dict)


def value_value_attention(block: nn.Module, tokens: Tensor) -> Tensor:
    """V-V self-attention with a transformer block's own attention weights.

    ``out_proj(softmax(V Vᵀ / sqrt(d_head)) V)`` per head, V from the value slice of the block's
    ``in_proj``. ``tokens`` are batch-first ``[B, L, W]`` and already normalised by the block's ``ln_1``.
    This is the attention of AnomalyCLIP's DPAM and of the CLIP-surgery stream PromptAD uses.
    """
    attention = block.attn
    if not isinstance(attention, nn.MultiheadAttention) or not attention._qkv_same_embed_dim:
        raise ValueError(
            "V-V attention needs blocks whose attention is an nn.MultiheadAttention with a packed in_proj"
        )
    width = tokens.shape[-1]
    heads = int(attention.num_heads)
    weight = attention.in_proj_weight[2 * width :]
    bias = attention.in_proj_bias[2 * width :] if attention.in_proj_bias is not None else None
    # Mixed precision: float32 tokens meet weights rounded to the low type (the layer hooks of
    # use_mixed_precision do not see this direct F.linear).
    low = weight.dtype != torch.float32 and tokens.dtype == torch.float32
    with autocast_for(weight, low, weight.dtype):
        values = F.linear(tokens, weight, bias)
        batch, length, _ = values.shape
        values = values.view(batch, length, heads, width // heads).transpose(1, 2)
        # scaled_dot_product_attention scales by 1/sqrt(d_head), the scale of both official codes.
        mixed = F.scaled_dot_product_attention(values, values, values)
    mixed = mixed.transpose(1, 2).reshape(batch, length, width)
    return attention.out_proj(mixed)


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


class FrozenCLIP(BackbonePrecision, nn.Module):
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
        precision: ``fp32`` (default); pure ``fp16`` / ``bf16``: open_clip's ``precision`` (weights and
            residual stream in that type, LayerNorms computed in float32); mixed ``amp-bf16`` /
            ``amp-fp16``: float32 stream, norms, softmax and accumulations, matmul operands in the low
            type; ``auto``: see :func:`~anomaly_vlm.backbones.precision.resolve_precision`. Some
            official codes ran their published numbers in fp16 (PromptAD); it is part of the identity.
        precision_device: ``cpu`` or ``cuda``, the device ``auto`` decides for (None: a visible GPU).
        release_precision: the method's official GPU precision, what ``auto`` picks on a GPU.
    """

    capabilities = BackboneCapabilities(family="CLIP", text_tower=True, patch_tokens=True, clip_tokens=True)

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
        precision: str = "fp32",
        precision_device: str | None = None,
        release_precision: str | None = None,
    ) -> None:
        super().__init__()
        register_package_model_configs()
        precision = self._resolve_precision(precision, precision_device, release_precision)
        model_name = model
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"backbone.model='{model_name}' is not an open_clip model. See open_clip.list_models()."
            )
        self.model_name = model_name
        self.pretrained = pretrained
        weight_file = resolve_weights(model_name, pretrained, cache_dir)
        with torch.random.fork_rng(devices=[]), _quiet_open_clip_warnings():
            torch.manual_seed(seed)
            # Built empty on purpose: weights are resolved above (fast offline failure) and loaded below.
            model = open_clip.create_model(
                model_name,
                pretrained=None,
                force_quick_gelu=quick_gelu,
                precision=precision if precision in PURE_PRECISIONS else "fp32",
            )
        if weight_file is not None:
            log.info("Loading %s weights from %s", model_name, weight_file)
            load_weights(model, weight_file)
        self.identity = weights_identity(model_name, pretrained, seed) + (":quickgelu" if quick_gelu else "")
        if precision != "fp32":
            self.identity += f":{precision}"
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
        if precision in MIXED_PRECISIONS:
            use_mixed_precision(model, MIXED_PRECISIONS[precision])
        elif precision != "fp32":
            use_fast_attention(model)
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
    def dtype(self) -> torch.dtype:
        """Type of the activations between blocks: float32 in fp32 and mixed modes, else the weights'."""
        return PURE_PRECISIONS.get(self.precision, torch.float32)

    def _run_in(self, precision: str) -> None:
        # Mixed: the matmul weights rounded once and their layers hooked; pure: open_clip's ``precision``
        # (its float32 LayerNorms, weights and projections in the low type).
        if precision in MIXED_PRECISIONS:
            use_mixed_precision(self.clip, MIXED_PRECISIONS[precision])
            return
        for module in self.clip.modules():
            if type(module) in (nn.LayerNorm, open_clip.transformer.LayerNorm):
                module.__class__ = open_clip.transformer.LayerNormFp32
        open_clip.model.convert_weights_to_lp(self.clip, dtype=PURE_PRECISIONS[precision])
        use_fast_attention(self.clip)

    @property
    def logit_scale(self) -> Tensor:
        """The model's stored ``logit_scale`` parameter (log of the trained temperature, not exp'ed)."""
        return self.clip.logit_scale.detach()

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def blocks(self) -> nn.ModuleList:
        """The vision transformer's residual blocks, in order (block ``i`` is ``blocks[i - 1]``)."""
        return self.visual.transformer.resblocks

    @property
    def proj(self) -> Tensor:
        """``[W, D]`` visual projection into the joint embedding space."""
        return self.visual.proj

    @property
    def positional_embedding(self) -> Tensor:
        """``[1 + N, W]`` positional embedding at this backbone's input size."""
        return self.visual.positional_embedding

    def ln_pre(self, tokens: Tensor) -> Tensor:
        """The layer norm before the first block."""
        return self.visual.ln_pre(tokens)

    def ln_post(self, tokens: Tensor) -> Tensor:
        """The layer norm after the last block (before pooling and projection)."""
        return self.visual.ln_post(tokens)

    def run_block(self, block: nn.Module, tokens: Tensor) -> Tensor:
        """Apply one of :attr:`blocks` to batch-first ``[B, L, W]`` tokens."""
        # open_clip >= 2.26 is batch-first; older releases stored LND. Handle both, never permute blindly.
        if getattr(self.visual.transformer, "batch_first", True):
            return block(tokens)
        return block(tokens.transpose(0, 1)).transpose(0, 1)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def normalize(self, images: Tensor) -> Tensor:
        """Map ``[0, 1]`` RGB images to the model's normalised input."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def denormalize(self, pixels: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: normalised input back to ``[0, 1]`` RGB."""
        return pixels * self.pixel_std.to(pixels.dtype) + self.pixel_mean.to(pixels.dtype)

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
        x = visual.conv1(pixels.to(self.dtype)).to(self.dtype)
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
        """CLS pooling of the last block's output: ``ln_post(x[:, 0]) @ proj`` -> float32 ``[B, D]``."""
        return self.project(self.visual.ln_post(final_tokens[:, 0]))

    def project(self, tokens: Tensor) -> Tensor:
        """Project width-``W`` tokens (already after ln_post) into the joint embedding space (float32,
        whatever the precision: embeddings meet float32 text classifiers and memories)."""
        proj = self.visual.proj
        with autocast_for(proj, self.mixed_precision, self.compute_dtype):
            return (tokens.to(proj.dtype) @ proj).float()

    def encode_image(
        self, images: Tensor, layers: Sequence[int] = (), normalized: bool = False
    ) -> ImageFeatures:
        """Encode ``[B, 3, H, W]`` images in ``[0, 1]`` (or already normalised with ``normalized=True``)."""
        tokens = self.embed_patches(images, normalized=normalized)
        final, taps = self.run_blocks(tokens, layers)
        final = self.visual.ln_post(final)
        return self._float_features(final[:, 0] @ self.visual.proj, final[:, 1:], taps)

    @staticmethod
    def _float_features(embedding: Tensor, patches: Tensor, taps: dict[int, Tensor]) -> ImageFeatures:
        """Image features in float32 whatever the precision: methods meet them with their own float32
        layers (a no-op in fp32 and mixed precision, whose stream is float32 already)."""
        return ImageFeatures(
            global_embedding=embedding.float(),
            patch_tokens=patches.float(),
            layer_tokens={index: tokens.float() for index, tokens in taps.items()},
        )

    def encode_image_prompted(
        self,
        images: Tensor,
        prompts: Sequence[Tensor],
        layers: Sequence[int] = (),
        normalized: bool = False,
    ) -> ImageFeatures:
        """Encode images with learned visual prompt tokens in the first ``len(prompts)`` blocks.

        ``prompts[k]`` (``[B, n, W]``, or ``[n, W]`` shared by the batch) enters block ``k + 1``
        (1-based): before block 1 the ``n`` tokens are appended after the patch tokens; before each
        later prompted block they replace the last ``n`` tokens of the sequence (what the previous
        block made of the earlier prompts). After the last prompted block they stay in the sequence and
        keep taking part in attention. Outputs never contain them: the taps are ``[B, 1 + N, W]`` (CLS
        and patches, as :meth:`encode_image`), the pooled embedding is ``ln_post(CLS) @ proj``. This is
        the visual deep prompting of prompt-learning methods (AdaCLIP); differentiable with respect to
        ``prompts``.

        Args:
            images: ``[B, 3, H, W]`` in ``[0, 1]`` (or already normalised with ``normalized=True``).
            prompts: one tensor per prompted block, all with the same number of tokens ``n >= 1``.
            layers: blocks (1-based) whose outputs are returned in ``layer_tokens``.
            normalized: the images are already normalised.
        """
        if not prompts:
            raise ValueError("encode_image_prompted needs at least one block of prompt tokens")
        if len(prompts) > self.num_layers:
            raise ValueError(
                f"{len(prompts)} blocks of visual prompts for the {self.num_layers} blocks of "
                f"'{self.model_name}'"
            )
        taps = set(self.check_layers(layers))
        x = self.ln_pre(self.embed_patches(images, normalized=normalized))
        batch = x.shape[0]
        count = int(prompts[0].shape[-2])

        def expand(tokens: Tensor) -> Tensor:
            if tokens.shape[-2:] != (count, x.shape[-1]):
                raise ValueError(
                    f"visual prompts must be [B, {count}, {x.shape[-1]}] in every block, "
                    f"got {tuple(tokens.shape)}"
                )
            tokens = tokens.to(x.dtype)
            return tokens.unsqueeze(0).expand(batch, -1, -1) if tokens.ndim == 2 else tokens

        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            if index == 1:
                x = torch.cat([x, expand(prompts[0])], dim=1)
            elif index <= len(prompts):
                x = torch.cat([x[:, :-count], expand(prompts[index - 1])], dim=1)
            x = self.run_block(block, x)
            if index in taps:
                outputs[index] = x[:, :-count]
        final = self.ln_post(x[:, :-count])
        return self._float_features(final[:, 0] @ self.proj, final[:, 1:], outputs)

    def encode_dual_path(
        self,
        images: Tensor,
        vv_start: int = 1,
        layers: Sequence[int] = (),
        post_attention_layers: Sequence[int] = (),
        normalized: bool = False,
    ) -> DualPathFeatures:
        """The original stream plus a V-V attention stream beside it (CLIP surgery / DPAM).

        The V-V stream starts as the original stream's input to block ``vv_start`` (1-based) and adds,
        for every block ``l >= vv_start``, ``VV_l(ln_1(x_l))`` (:func:`value_value_attention`), ``x_l`` being
        the ORIGINAL stream's input to block ``l``; it has no MLP. The original stream runs the
        unmodified blocks. Nothing here is learned, so the result is a frozen feature.
        """
        self.check_layers([vv_start])
        taps = set(self.check_layers(layers))
        inside = set(self.check_layers(post_attention_layers))
        visual = self.visual
        x = visual.ln_pre(self.embed_patches(images, normalized=normalized))
        seq_first = not getattr(visual.transformer, "batch_first", True)
        stream: Tensor | None = None
        outputs: dict[int, Tensor] = {}
        post_attention: dict[int, Tensor] = {}
        for index, block in enumerate(visual.transformer.resblocks, start=1):
            if index >= vv_start:
                refined = value_value_attention(block, block.ln_1(x))
                stream = x + refined if stream is None else stream + refined
            if index in inside:
                # The block's two residual steps, split to expose the state between them.
                attended = block.ln_1(x)
                attended = attended.transpose(0, 1) if seq_first else attended
                attended = block.attention(q_x=attended)
                attended = attended.transpose(0, 1) if seq_first else attended
                x = x + block.ls_1(attended)
                post_attention[index] = x
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            else:
                x = block(x.transpose(0, 1)).transpose(0, 1) if seq_first else block(x)
            if index in taps:
                outputs[index] = x
        assert stream is not None
        return DualPathFeatures(
            global_embedding=visual.ln_post(x[:, 0]) @ visual.proj,
            vv_patch_embeddings=visual.ln_post(stream[:, 1:]) @ visual.proj,
            layer_tokens=outputs,
            post_attention_tokens=post_attention,
        )

    def token_embeddings(self, token_ids: Tensor) -> Tensor:
        """``[S, L, W]`` input embeddings of tokenised sentences (before the positional embedding)."""
        return self.clip.token_embedding(token_ids.to(self.clip.token_embedding.weight.device))

    def encode_text_embeddings(self, embeddings: Tensor, token_ids: Tensor) -> Tensor:
        """Encode ``[S, L, W]`` input token embeddings (e.g. with learned context vectors in place).

        As CLIP's ``encode_text`` after the token lookup: positional embedding, causal text transformer,
        ``ln_final`` of the EOT token (argmax of ``token_ids``), ``text_projection``. Not normalised;
        differentiable with respect to ``embeddings``.
        """
        clip = self.clip
        transformer = clip.transformer
        cast = self.dtype  # the stream's type: float32 in mixed precision, whatever the weights are
        eot = token_ids.argmax(dim=-1)
        length = self._text_length(eot, embeddings.shape[1])
        x = embeddings[:, :length].to(cast) + clip.positional_embedding[:length].to(cast)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        seq_first = not getattr(transformer, "batch_first", True)
        if seq_first:
            x = transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        else:
            x = transformer(x, attn_mask=mask)
        return self._project_end_tokens(x, eot, embeddings.dtype)

    def encode_text_deep_prompted(self, token_ids: Tensor, deep_prompts: Mapping[int, Tensor]) -> Tensor:
        """Encode tokenised sentences with learned tokens overwriting positions ``1 .. n`` in chosen blocks.

        ``deep_prompts[i]`` (``[S, n, W]``, or ``[n, W]`` shared by all sentences) replaces the token
        positions right after the start token of the input to text block ``i`` (1-based); blocks without
        an entry run unchanged. Otherwise as CLIP's ``encode_text``: token and positional embeddings,
        causal transformer, ``ln_final`` of the EOT token (argmax of ``token_ids``),
        ``text_projection``. Not normalised; differentiable with respect to the prompts. This is the
        text-side deep prompting of AdaCLIP (and, with context vectors too, of AnomalyCLIP's
        :class:`~anomaly_vlm.prompts.learnable.LearnablePromptEncoder`).
        """
        clip = self.clip
        transformer = clip.transformer
        cast = self.dtype  # the stream's type: float32 in mixed precision, whatever the weights are
        token_ids = token_ids.to(clip.token_embedding.weight.device)
        eot = token_ids.argmax(dim=-1)
        counts = {int(tokens.shape[-2]) for tokens in deep_prompts.values()}
        if deep_prompts and int(eot.min()) <= max(counts):
            raise ValueError(
                f"deep text prompts of {max(counts)} tokens would overwrite the end token of a sentence of "
                f"{int(eot.min()) + 1} tokens"
            )
        depth = len(transformer.resblocks)
        bad = [index for index in deep_prompts if not 1 <= int(index) <= depth]
        if bad:
            raise ValueError(f"deep text prompts for blocks {bad} outside 1..{depth} of '{self.model_name}'")
        length = self._text_length(eot, token_ids.shape[1])
        embedded = clip.token_embedding(token_ids[:, :length])
        x = embedded.to(cast) + clip.positional_embedding[:length].to(cast)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        seq_first = not getattr(transformer, "batch_first", True)
        for index, block in enumerate(transformer.resblocks, start=1):
            tokens = deep_prompts.get(index)
            if tokens is not None:
                tokens = tokens.to(x.dtype)
                if tokens.ndim == 2:
                    tokens = tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], tokens, x[:, 1 + tokens.shape[1] :]], dim=1)
            if seq_first:
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
            else:
                x = block(x, attn_mask=mask)
        return self._project_end_tokens(x, eot, embedded.dtype)

    def _text_length(self, eot: Tensor, context: int) -> int:
        """Token positions the text transformer must run for end tokens at ``eot``.

        With CLIP's causal mask no position after the last end token can reach an end-token output, so
        the sequences are cut there: exact up to float summation order, and a prompt of 10 tokens runs
        ~7x fewer positions than the 77 of the context. A text tower without a causal mask runs all.
        """
        return int(eot.max()) + 1 if self.clip.attn_mask is not None else context

    def _project_end_tokens(self, x: Tensor, eot: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """CLIP's text head: ``ln_final`` of each sentence's end token (``eot``), then the projection.

        Returned in ``dtype``, the type of the embeddings that entered the tower (:meth:`stream_tokens`):
        token embeddings and learned float32 prompts give float32 features, which meet the methods' own
        float32 layers whatever the precision, as the image features do; prompts a method builds in the
        backbone's type (PromptAD, as its official code) keep that type. A no-op in fp32."""
        clip = self.clip
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        projection = clip.text_projection
        return (projection(x) if isinstance(projection, nn.Linear) else x @ projection).to(dtype)

    def stream_tokens(self, tokens: Tensor) -> Tensor:
        """``tokens`` in the residual stream's type (:attr:`dtype`): how token embeddings and learned
        tokens (context vectors, deep prompts) enter a tower whatever the precision; the cast is
        differentiable, so gradients reach the float32 parameters behind them."""
        return tokens.to(self.dtype)

    @property
    def text_width(self) -> int:
        """Residual-stream width of the text transformer."""
        return int(self.clip.ln_final.weight.shape[0])

    @property
    def text_num_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

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
            chunks.append(self.encode_text_embeddings(self.token_embeddings(tokens), tokens))
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=device)

    def patch_tokens(
        self,
        images: Tensor,
        blocks: Sequence[int] | None = None,
        norm: bool = True,
        normalized: bool = False,
    ) -> dict[int, Tensor]:
        """Patch tokens ``[B, N, W]`` at the given blocks (1-based; None = the last), CLS removed, after
        ``ln_post`` when ``norm`` (unprojected): the family-neutral API that
        :class:`~anomaly_vlm.backbones.capabilities.BackboneCapabilities` declares."""
        taps = self.check_layers(blocks if blocks is not None else [self.num_layers])
        _, outputs = self.run_blocks(
            self.embed_patches(images, normalized=normalized), taps, last_block=max(taps)
        )
        return {block: (self.ln_post(x) if norm else x)[:, 1:] for block, x in outputs.items()}

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name}, weights={self.identity}, "
            f"image_size={self.image_size}, grid={self.grid_size}"
        )
