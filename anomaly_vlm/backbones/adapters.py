"""Learned modules inside the frozen blocks, and single-path V-V attention: backbone capabilities.

Adapter methods (AA-CLIP) change the residual stream itself: after chosen vision or text blocks a small
learned module rewrites the stream, and every later block reads the rewritten one. The frozen weights stay
frozen and shared; what is learned is passed in, so a method never reaches into the encoders:

* :class:`ResidualAdapter`: ``x <- w * rescale(fc(x)) + (1 - w) * x``, the adapted output rescaled per
  token to the norm of its input;
* :func:`encode_image_adapted` / :func:`encode_text_adapted`: the encoders with a hook after chosen
  blocks (1-based), e.g. residual adapters in the first blocks; the vision blocks optionally compute their
  attention weights explicitly (:func:`explicit_attention_block`), as code that asks for them does;
* :func:`encode_image_value_attention`: the vision tower with the self-attention of the blocks from
  ``start`` on replaced by V-V attention (one stream, MLPs kept), which is how AA-CLIP's training targets
  are made (its ``DAPM_replace``), unlike the dual stream of
  :meth:`~anomaly_vlm.backbones.clip.FrozenCLIP.encode_dual_path`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP, ImageFeatures, value_value_attention
from anomaly_vlm.backbones.precision import autocast_for

#: A function of the batch-first residual stream ``[B, L, W]`` after a block, returning the new stream.
BlockHook = Callable[[Tensor], Tensor]


class ResidualAdapter(nn.Module):
    """A residual adapter of a block's output: ``x <- weight * a * |x| / |a| + (1 - weight) * x``.

    ``a = LeakyReLU(Linear(x))`` (no bias, slope 0.01), rescaled per token to the L2 norm of ``x`` so the
    mix keeps the stream's scale. It acts on every token (CLS and padding included).

    Args:
        width: the stream's width.
        weight: the share of the adapted output (AA-CLIP: 0.1).
    """

    def __init__(self, width: int, weight: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(int(width), int(width), bias=False)
        self.mix = float(weight)

    def adapted(self, x: Tensor) -> Tensor:
        """The rescaled adapter output ``a * |x| / |a|``."""
        out = F.leaky_relu(self.fc(x), 0.01)
        return out * x.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix * self.adapted(x) + (1.0 - self.mix) * x

    def extra_repr(self) -> str:
        return f"width={self.fc.in_features}, weight={self.mix}"


def _run_hook(hook: BlockHook, x: Tensor) -> Tensor:
    """``hook`` on the stream ``x``: in float32, the type of its learned parameters in every precision (a
    low-precision stream meets them as the backbone's float32 features do), its output back in the
    stream's type. A no-op cast in fp32 and mixed precision, whose stream is float32; differentiable."""
    return hook(x.float()).to(x.dtype)


def _check_hooks(hooks: Mapping[int, BlockHook], depth: int, what: str) -> None:
    bad = sorted(int(index) for index in hooks if not 1 <= int(index) <= depth)
    if bad:
        raise ValueError(f"{what} hooks after blocks {bad} outside 1..{depth}")


def explicit_attention_block(block: nn.Module, x: Tensor) -> Tensor:
    """One block on batch-first ``[B, L, W]`` tokens, its self-attention computed as a sequence-first
    ``nn.MultiheadAttention`` called with its default ``need_weights=True`` computes it.

    That call materialises the attention weights (``bmm`` of the scaled queries and the keys, ``softmax``,
    ``bmm`` with the values, on sequence-first tokens): what code does whose blocks return their attention
    (AA-CLIP's). The block's own call (``need_weights=False``) goes to ``scaled_dot_product_attention`` or
    PyTorch's fused kernel instead, which sums in another order: the same function, other float32 roundings
    (about 4e-7 per block at ViT-L-14-336's size), enough to put a learned LeakyReLU's pre-activation within
    rounding of 0 on the other side of the kink. Works in every precision (mixed: under autocast, as the
    block's own attention).
    """
    attention = block.attn
    if not isinstance(attention, nn.MultiheadAttention) or not attention._qkv_same_embed_dim:
        raise ValueError("explicit attention needs blocks whose attention is a packed nn.MultiheadAttention")
    normed = block.ln_1(x.transpose(0, 1))
    weight = attention.in_proj_weight
    low = weight.dtype != torch.float32 and normed.dtype == torch.float32
    with autocast_for(weight, low, weight.dtype):
        mixed, _ = F.multi_head_attention_forward(
            normed,
            normed,
            normed,
            attention.embed_dim,
            attention.num_heads,
            weight,
            attention.in_proj_bias,
            attention.bias_k,
            attention.bias_v,
            attention.add_zero_attn,
            0.0,
            attention.out_proj.weight,
            attention.out_proj.bias,
            training=False,
            need_weights=True,
        )
    x = x + block.ls_1(mixed.transpose(0, 1).to(x.dtype))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_image_adapted(
    backbone: FrozenCLIP,
    images: Tensor,
    hooks: Mapping[int, BlockHook],
    layers: Sequence[int] = (),
    normalized: bool = False,
    explicit_attention: bool = False,
) -> ImageFeatures:
    """The vision tower with ``hooks[i]`` applied to the stream after block ``i`` (1-based).

    The taps (``layer_tokens``, ``[B, 1 + N, W]``, raw stream with CLS) are taken after the hook of their
    block; ``patch_tokens`` and ``global_embedding`` come from the last block's (hooked) output as in
    :meth:`FrozenCLIP.encode_image` (float32 whatever the precision). Differentiable with respect to
    what the hooks hold, which run in float32 (:func:`_run_hook`). ``explicit_attention`` runs every
    block through :func:`explicit_attention_block` instead of its own call.
    """
    _check_hooks(hooks, backbone.num_layers, "vision")
    taps = set(backbone.check_layers(layers))
    x = backbone.ln_pre(backbone.embed_patches(images, normalized=normalized))
    outputs: dict[int, Tensor] = {}
    for index, block in enumerate(backbone.blocks, start=1):
        x = explicit_attention_block(block, x) if explicit_attention else backbone.run_block(block, x)
        hook = hooks.get(index)
        if hook is not None:
            x = _run_hook(hook, x)
        if index in taps:
            outputs[index] = x
    final = backbone.ln_post(x)
    return backbone._float_features(final[:, 0] @ backbone.proj, final[:, 1:], outputs)


def encode_text_adapted(
    backbone: FrozenCLIP, token_ids: Tensor, hooks: Mapping[int, BlockHook], project: bool = True
) -> Tensor:
    """The text tower with ``hooks[i]`` applied to the stream after text block ``i`` (1-based).

    Returns the end tokens (argmax of ``token_ids``) after ``ln_final``: ``[S, D]`` through CLIP's
    ``text_projection`` when ``project``, else ``[S, text_width]`` for a method that brings its own head;
    in the token embeddings' type (float32) whatever the precision. Positions after the last end token
    are not run (with the causal mask they cannot reach an end token). The stream has the backbone's
    type (float32 in mixed precision); the hooks run in float32 (:func:`_run_hook`).
    """
    clip = backbone.clip
    transformer = clip.transformer
    _check_hooks(hooks, len(transformer.resblocks), "text")
    token_ids = token_ids.to(clip.token_embedding.weight.device)
    eot = token_ids.argmax(dim=-1)
    length = backbone._text_length(eot, token_ids.shape[1])
    embedded = clip.token_embedding(token_ids[:, :length])
    x = backbone.stream_tokens(embedded) + backbone.stream_tokens(clip.positional_embedding[:length])
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    seq_first = not getattr(transformer, "batch_first", True)
    for index, block in enumerate(transformer.resblocks, start=1):
        if seq_first:
            x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        else:
            x = block(x, attn_mask=mask)
        hook = hooks.get(index)
        if hook is not None:
            x = _run_hook(hook, x)
    if project:
        return backbone._project_end_tokens(x, eot, embedded.dtype)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0], device=x.device), eot].to(embedded.dtype)


def value_attention_block(block: nn.Module, x: Tensor, mix_batch: bool = False) -> Tensor:
    """One block with its self-attention replaced by V-V attention: ``x + VV(ln_1(x))``, then its MLP.

    ``mix_batch`` attends across the batch at each token position instead of across the tokens of each
    image: what code that hands sequence-first ``[L, B, W]`` tokens to an attention written for
    batch-first input computes (AA-CLIP's ``DAPM_replace``); an image's output then depends on the
    other images of its batch. With one image the attention weights are all 1 and the branch is
    ``out_proj(v)``.
    """
    normed = block.ln_1(x)
    if mix_batch:
        attended = value_value_attention(block, normed.transpose(0, 1)).transpose(0, 1)
    else:
        attended = value_value_attention(block, normed)
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@torch.no_grad()
def encode_image_value_attention(
    backbone: FrozenCLIP,
    images: Tensor,
    start: int,
    layers: Sequence[int] = (),
    mix_batch: bool = False,
    normalized: bool = False,
) -> dict[int, Tensor]:
    """The raw stream ``[B, 1 + N, W]`` at the outputs of ``layers`` of a tower whose blocks ``start ..
    depth`` (1-based) run :func:`value_attention_block`; earlier blocks run unchanged. Frozen (no grad);
    float32 whatever the precision, as the backbone's other features."""
    backbone.check_layers([start])
    taps = set(backbone.check_layers(layers))
    x = backbone.ln_pre(backbone.embed_patches(images, normalized=normalized))
    outputs: dict[int, Tensor] = {}
    last = max(taps) if taps else backbone.num_layers
    for index, block in enumerate(backbone.blocks, start=1):
        if index > last:
            break
        if index >= start:
            x = value_attention_block(block, x, mix_batch=mix_batch)
        else:
            x = backbone.run_block(block, x)
        if index in taps:
            outputs[index] = x.float()
    return outputs


__all__ = [
    "BlockHook",
    "ResidualAdapter",
    "encode_image_adapted",
    "encode_image_value_attention",
    "encode_text_adapted",
    "explicit_attention_block",
    "value_attention_block",
]
