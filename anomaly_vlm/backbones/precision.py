"""Numeric precision of the frozen backbone (``backbone.precision``).

Two kinds are kept apart:

* **mixed** (``amp-bf16``, ``amp-fp16``): the residual stream, every LayerNorm, the attention softmax
  (inside ``scaled_dot_product_attention``, which accumulates in float32) and the matmul accumulations
  are float32; the matrix products take their operands in the low type, as ``torch.autocast`` does. The
  frozen weights of the linear, convolution and attention layers are rounded to the low type once, when
  the backbone is built: autocast would round the very same float32 values on every call (it caches
  casts only for weights that require gradients, which frozen ones do not), which cost more than the
  matmuls themselves on short window sequences. Embeddings, the projections ``proj`` and
  ``text_projection`` and the LayerNorm parameters stay float32; anything trainable outside the
  backbone stays float32 too, so gradients of learned prompts and adapters are float32.
* **pure** (``bf16``, ``fp16``): open_clip's ``precision``: weights and the residual stream in the low
  type, LayerNorms computed in float32 and rounded back.

``auto`` picks mixed bf16 on a CPU with native bf16 (AMX or AVX-512 bf16), the official release's own
precision for the method on a GPU, and fp32 otherwise. ``fp32`` changes nothing (parity harnesses use it).

Either low mode also replaces ``nn.MultiheadAttention``'s forward, for batch-first packed attention
without weights returned, by one ``F.linear`` on the contiguous batch-first tokens and
``scaled_dot_product_attention``: PyTorch's own path transposes to sequence-first and multiplies a
non-contiguous 3-D input, which becomes a batched product against the weight copied once per sequence
position (the profile of WinCLIP's window path in bf16: 40 % of the time in ``aten::copy_`` of
``[10, 896, 2688]`` weights), and its fast path is off under autocast.

In mixed bf16 on a CPU whose oneDNN has bf16 kernels, a frozen linear layer called without gradients runs
oneDNN's linear on its weight packed once into the kernel's blocked layout, with the bias (and, in
open_clip's MLP, the exact GELU) applied to the float32 accumulator before the result is rounded to bf16.
``F.linear`` under autocast repacks the weight, writes the bias into the output before the product and
runs GELU as a separate pass on the rounded bf16 values: on WinCLIP's window path the packed kernels save
about a sixth of each MLP's time (profile: ``aten::addmm`` 63 % and ``aten::gelu`` 5 % of the pass).
Calls that need gradients (prompts and adapters learned through the backbone), exports and other devices
take autocast's path.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

#: Every ``backbone.precision`` value.
PRECISION_CHOICES = ("auto", "fp32", "amp-bf16", "amp-fp16", "bf16", "fp16")
#: Pure low-precision modes: open_clip builds the weights and the residual stream in this type.
PURE_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Mixed modes: float32 stream, norms and accumulations; matmul operands in this type.
MIXED_PRECISIONS = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}

#: The precision each official release ran its published GPU numbers in (what ``auto`` picks on a GPU):
#: APRIL-GAN wraps its passes in fp16 autocast; AnomalyCLIP's OpenAI-CLIP loader converts the weights to
#: fp16 on a GPU; MuSc and AdaCLIP run an fp16 residual stream; PromptAD builds fp16 weights. WinCLIP has
#: no official code (anomalib, its peer implementation, runs fp32), nor has the plain CLIP baseline. The
#: 2025 releases run fp32: AnomalyDINO never passes its ``half_precision`` flag; AA-CLIP loads with
#: ``precision='fp32'``; Bayes-PFL and FAPrompt build their CLIP with the fp16 conversion commented out
#: (FAPrompt's deep text prompts alone pass through ``.half()``, which the method reproduces in every mode).
RELEASE_GPU_PRECISION = {
    "aprillab": "amp-fp16",
    "anomalyclip": "fp16",
    "musc": "fp16",
    "adaclip": "fp16",
    "promptad": "fp16",
    "winclip": "fp32",
    "clip": "fp32",
    "anomalydino": "fp32",
    "aaclip": "fp32",
    "bayespfl": "fp32",
    "faprompt": "fp32",
    "alignment": "fp32",
}


def cpu_has_native_bf16() -> bool:
    """True on a CPU with bf16 matrix instructions (AMX tiles or AVX-512 bf16)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(cpu, probe, None)
        if check is not None:
            with contextlib.suppress(Exception):
                if check():
                    return True
    flags = Path("/proc/cpuinfo")
    if flags.is_file():
        with contextlib.suppress(OSError):
            text = flags.read_text()
            return "amx_bf16" in text or "avx512_bf16" in text
    return False


def resolve_precision(
    requested: str, device_type: str | None = None, release_precision: str | None = None
) -> tuple[str, str]:
    """The concrete precision for ``requested`` and why.

    Args:
        requested: a :data:`PRECISION_CHOICES` value.
        device_type: ``cuda`` or ``cpu``; None: ``cuda`` when a GPU is visible.
        release_precision: the method's official GPU precision (:data:`RELEASE_GPU_PRECISION`).

    Returns:
        ``(precision, reason)``; ``precision`` is never ``auto``.

    Raises:
        ValueError: ``requested`` is not a known value.
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"backbone.precision={requested!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if requested != "auto":
        return requested, "configured"
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        chosen = release_precision or "amp-fp16"
        return chosen, f"auto: GPU, the official release's precision ({chosen})"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "amp-bf16", "auto: CPU with native bf16 (AMX or AVX-512 bf16)"
    return "fp32", f"auto: {device_type} without native bf16"


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm computed and returned in float32 whatever the input type (mixed precision's norms)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class BatchFirstAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose batch-first packed self/cross attention runs on contiguous tokens.

    Same parameters and state-dict keys (the class of an existing module is swapped); calls it cannot
    serve (weights requested, key padding masks, separate projections, sequence-first) go to PyTorch's.
    """

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        plain = (
            self.batch_first
            and self._qkv_same_embed_dim
            and not need_weights
            and key_padding_mask is None
            and self.bias_k is None
            and not self.add_zero_attn
            and (self.dropout == 0.0 or not self.training)
            and query.dim() == 3
        )
        if not plain:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        width, heads = self.embed_dim, self.num_heads
        weight, bias = self.in_proj_weight, self.in_proj_bias

        def part(tokens: Tensor, start: int, stop: int) -> Tensor:
            return F.linear(tokens, weight[start:stop], None if bias is None else bias[start:stop])

        if query is key and key is value:
            packed = packed_linear(self, query, weight, bias)
            q, k, v = (F.linear(query, weight, bias) if packed is None else packed).chunk(3, dim=-1)
        else:
            q = part(query, 0, width)
            if key is value:
                k, v = part(key, width, 3 * width).chunk(2, dim=-1)
            else:
                k, v = part(key, width, 2 * width), part(value, 2 * width, 3 * width)
        batch, q_len, _ = q.shape
        k_len = k.shape[1]
        q = q.reshape(batch, q_len, heads, width // heads).transpose(1, 2)
        k = k.reshape(batch, k_len, heads, width // heads).transpose(1, 2)
        v = v.reshape(batch, k_len, heads, width // heads).transpose(1, 2)
        mask = attn_mask
        if mask is not None:
            # nn.MultiheadAttention: True = masked out, float = added; SDPA: True = attend.
            mask = ~mask if mask.dtype == torch.bool else mask.to(q.dtype)
            if mask.dim() == 3:
                mask = mask.reshape(batch, heads, q_len, k_len)
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        mixed = mixed.transpose(1, 2).reshape(batch, q_len, width)
        return self.out_proj(mixed), None


#: Frozen layer -> (weight version it was packed from, packed weight): oneDNN's blocked copies of the
#: low-precision weights, made on first use. Held outside the modules so that copying, pickling or saving a
#: module never meets the opaque oneDNN tensors; an entry goes with its module.
_PACKED_WEIGHTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], Tensor]] = (
    weakref.WeakKeyDictionary()
)
#: Whether mixed bf16 may use the packed oneDNN kernels at all (tests compare both paths).
PACKED_KERNELS = True


@functools.cache
def _onednn_bf16() -> bool:
    """oneDNN's linear kernels with bf16 operands are available on this CPU."""
    with contextlib.suppress(Exception):
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    return False


def packed_linear(
    owner: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str = "none"
) -> Tensor | None:
    """``activation(x @ weight.T + bias)`` in bf16 on ``weight`` packed once for oneDNN, or None where
    that path does not apply: not bf16 weights on the CPU, gradients wanted, tracing or exporting.

    Args:
        owner: the layer the packed weight belongs to (the cache key).
        x: input of any leading shape; rounded to bf16 here, as autocast would.
        weight, bias: the layer's bf16 parameters (frozen).
        activation: ``none``, ``gelu`` (exact, erf) or ``gelu-tanh``, applied before rounding.
    """
    if (
        not PACKED_KERNELS
        or weight.dtype != torch.bfloat16
        or weight.device.type != "cpu"
        or x.device.type != "cpu"
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or not _onednn_bf16()
    ):
        return None
    version = (weight.data_ptr(), weight._version)
    cached = _PACKED_WEIGHTS.get(owner)
    if cached is None or cached[0] != version:
        cached = (version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
        _PACKED_WEIGHTS[owner] = cached
    attribute, algorithm = {"none": ("none", ""), "gelu": ("gelu", "none"), "gelu-tanh": ("gelu", "tanh")}[
        activation
    ]
    bias = None if bias is None else bias.detach().to(torch.bfloat16)
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), cached[1], bias, attribute, [], algorithm)


class PackedLinear(nn.Linear):
    """A frozen ``nn.Linear`` of a mixed-precision backbone: :func:`packed_linear` where it applies, else
    ``F.linear`` (under the autocast its hooks enter). Same parameters and state-dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        packed = packed_linear(self, x, self.weight, self.bias)
        return super().forward(x) if packed is None else packed


class PackedGeluMlp(nn.Sequential):
    """open_clip's MLP (``c_fc``, ``gelu``, ``c_proj``) with GELU taken inside ``c_fc``'s packed kernel
    where :func:`packed_linear` applies; otherwise the three layers as they are."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        activation = "gelu-tanh" if self.gelu.approximate == "tanh" else "gelu"
        hidden = packed_linear(self.c_fc, x, self.c_fc.weight, self.c_fc.bias, activation)
        return super().forward(x) if hidden is None else self.c_proj(hidden)


def _is_open_clip_gelu_mlp(module: nn.Module) -> bool:
    return (
        type(module) is nn.Sequential
        and list(dict(module.named_children())) == ["c_fc", "gelu", "c_proj"]
        and type(module.gelu) is nn.GELU
        and isinstance(module.c_fc, nn.Linear)
        and isinstance(module.c_proj, nn.Linear)
    )


class _AutocastEnter:
    """Forward pre-hook: enter autocast to ``dtype`` on the input's device (picklable, no closure)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        device = next(
            (value.device.type for value in (*args, *kwargs.values()) if isinstance(value, Tensor)), "cpu"
        )
        context = torch.autocast(device, dtype=self.dtype)
        context.__enter__()
        module.__dict__.setdefault("_autocast_contexts", []).append(context)


def _autocast_leave(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """Forward hook (also on exceptions): leave the autocast the pre-hook entered."""
    contexts = module.__dict__.get("_autocast_contexts")
    if contexts:
        contexts.pop().__exit__(None, None, None)


#: Layers whose weights mixed precision rounds once and whose calls run under autocast.
_MATMUL_LAYERS = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)


def use_fast_attention(model: nn.Module) -> None:
    """Swap every ``nn.MultiheadAttention`` of ``model`` to :class:`BatchFirstAttention` (in place)."""
    for module in model.modules():
        if type(module) is nn.MultiheadAttention:
            module.__class__ = BatchFirstAttention


def use_mixed_precision(model: nn.Module, dtype: torch.dtype) -> None:
    """Make ``model`` (built in float32) run in mixed precision ``dtype`` (in place).

    Rounds the weights of linear, convolution and attention layers to ``dtype`` once, runs each such
    layer under autocast (forward hooks: whoever calls a block or a single layer gets it), and makes
    every LayerNorm compute and return float32. See the module docstring for why.
    """
    use_fast_attention(model)
    leaves: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.__class__ = FloatLayerNorm
        elif _is_open_clip_gelu_mlp(module):
            module.__class__ = PackedGeluMlp
        elif isinstance(module, _MATMUL_LAYERS):
            leaves.append(module)
            if type(module) in (nn.Linear, NonDynamicallyQuantizableLinear):
                module.__class__ = PackedLinear
    for module in leaves:
        for parameter in module.parameters(recurse=False):
            parameter.data = parameter.data.to(dtype)
        module.register_forward_pre_hook(_AutocastEnter(dtype), with_kwargs=True)
        module.register_forward_hook(_autocast_leave, with_kwargs=True, always_call=True)


def autocast_for(weight: Tensor, enabled: bool, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``weight``'s device when ``enabled`` (mixed precision), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(weight.device.type, dtype=dtype)


class BackbonePrecision:
    """What every frozen backbone family shares about ``backbone.precision``: resolving the request, the
    record written to ``results.json``, and converting an fp32-built backbone in place.

    A family implements :meth:`_run_in` (make its layers run in a concrete low precision) and states
    ``dtype`` (the type of its stream); ``model_name`` and ``identity`` are its own attributes.
    """

    requested_precision: str
    precision: str
    precision_reason: str
    model_name: str
    identity: str

    def _resolve_precision(
        self, requested: str, device_type: str | None, release_precision: str | None
    ) -> str:
        """Resolve ``requested`` (see :func:`resolve_precision`), remember it and why; the concrete value."""
        self.requested_precision = requested
        self.precision, self.precision_reason = resolve_precision(requested, device_type, release_precision)
        return self.precision

    @property
    def compute_dtype(self) -> torch.dtype:
        """Type the matrix products take their operands in (``backbone.precision``)."""
        return MIXED_PRECISIONS.get(self.precision) or PURE_PRECISIONS[self.precision]

    @property
    def mixed_precision(self) -> bool:
        """True in the ``amp-*`` modes (float32 stream, low-precision matmuls)."""
        return self.precision in MIXED_PRECISIONS

    def precision_record(self) -> dict[str, str]:
        """What ``backbone.precision`` asked for, what runs, and why (results.json, the start line)."""
        return {
            "requested": self.requested_precision,
            "resolved": self.precision,
            "reason": self.precision_reason,
        }

    def convert_precision(self, precision: str, reason: str = "configured") -> None:
        """Run this backbone, built in fp32, in ``precision`` from now on (in place), as one built in it.

        A saved detector checks its weights as saved (fp32), then runs them in the precision asked for.

        Raises:
            ValueError: ``precision`` is unknown (or ``auto``: resolve it first), or this backbone runs in
                another low precision already (its weights are rounded; build it in fp32).
        """
        if precision == self.precision:
            return
        if precision not in MIXED_PRECISIONS and precision not in PURE_PRECISIONS:
            raise ValueError(f"backbone.precision={precision!r} is not a concrete precision")
        if self.precision != "fp32":
            raise ValueError(
                f"backbone '{self.model_name}' runs in {self.precision}: its weights are rounded already and "
                f"cannot run in {precision}; build it in fp32"
            )
        self._run_in(precision)
        self.precision, self.requested_precision, self.precision_reason = precision, precision, reason
        self.identity += f":{precision}"

    def _run_in(self, precision: str) -> None:
        """Make the layers of this fp32 backbone run in the concrete low ``precision`` (in place)."""
        raise NotImplementedError(f"{type(self).__name__} does not convert its precision")
