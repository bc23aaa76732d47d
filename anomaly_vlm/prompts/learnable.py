"""Learnable (object-agnostic) text prompts with deep prompt tokens inside the text encoder.

A learnable prompt set is, like :class:`~anomaly_vlm.prompts.PromptSet`, data living in
``conf/prompts/<name>.yaml``: the fixed words of one normal and one anomalous sentence, how many learnable
context vectors precede them, and the shape of the deep prompt tokens. :class:`LearnablePromptEncoder` turns
it into trainable parameters and runs the frozen CLIP text transformer with them.

Paper: Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
ICLR 2024 (prompt learner and ``encode_text_learn`` of the official code, zqhang/AnomalyCLIP).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP

#: The word whose token embeddings the learnable context vectors replace (as in the official code).
PLACEHOLDER_WORD = "X"


@dataclass(frozen=True)
class LearnablePromptSet:
    """Two sentences ``[ctx_1 .. ctx_n] <normal_phrase>`` and ``[ctx_1 .. ctx_n] <anomalous_phrase>``.

    Args:
        name: registry key, equal to the config file name (``anomalyclip_learned``).
        normal_phrase: fixed words after the normal context vectors (``"object."``).
        anomalous_phrase: fixed words after the anomalous context vectors (``"damaged object."``).
        context_length: learnable context vectors per sentence (12), separate for the two sentences.
        deep_prompt_length: learnable tokens inserted in the deeper text blocks (4), shared by both
            sentences; they overwrite token positions ``1 .. deep_prompt_length``.
        deep_prompt_depth: the official ``--depth`` (9): deep tokens are inserted in text blocks
            ``2 .. deep_prompt_depth`` (1-based), i.e. ``deep_prompt_depth - 1`` sets of tokens. 1 = no
            deep prompts. It does not scale with the text encoder depth in the official code.
        init_std: standard deviation of the normal initialisation of every learnable vector (0.02).
        deep_prompt_fp16: round the deep tokens through float16 where they are inserted, as the
            official text encoder does (``.half()`` inside an otherwise float32 model; the gradient
            reaching them is rounded the same way). Moves maps by ~5e-4; False keeps them float32.
    """

    name: str
    normal_phrase: str = "object."
    anomalous_phrase: str = "damaged object."
    context_length: int = 12
    deep_prompt_length: int = 4
    deep_prompt_depth: int = 9
    init_std: float = 0.02
    deep_prompt_fp16: bool = True

    def __post_init__(self) -> None:
        for key in ("context_length", "deep_prompt_length", "deep_prompt_depth"):
            if int(getattr(self, key)) < (1 if key == "deep_prompt_depth" else 0):
                raise ValueError(f"prompt set '{self.name}': {key}={getattr(self, key)} is out of range")
        if self.deep_prompt_depth > 1 and self.deep_prompt_length < 1:
            raise ValueError(
                f"prompt set '{self.name}': deep_prompt_depth={self.deep_prompt_depth} needs "
                "deep_prompt_length >= 1"
            )
        if self.deep_prompt_length > self.context_length and self.deep_prompt_depth > 1:
            # Overwriting past the context would replace the sentence's own words.
            raise ValueError(
                f"prompt set '{self.name}': deep_prompt_length={self.deep_prompt_length} exceeds "
                f"context_length={self.context_length}"
            )
        if not self.normal_phrase.strip() or not self.anomalous_phrase.strip():
            raise ValueError(
                f"prompt set '{self.name}': normal_phrase and anomalous_phrase must be non-empty"
            )

    def sentences(self, category: str | None = None) -> tuple[list[str], list[str]]:
        """The tokenised sentences (context vectors shown as ``X``); the same for every category."""
        prefix = " ".join([PLACEHOLDER_WORD] * self.context_length)
        join = (lambda phrase: f"{prefix} {phrase}") if prefix else (lambda phrase: phrase)
        return [join(self.normal_phrase)], [join(self.anomalous_phrase)]

    def fingerprint(self) -> str:
        payload = json.dumps(
            [
                self.normal_phrase,
                self.anomalous_phrase,
                self.context_length,
                self.deep_prompt_length,
                self.deep_prompt_depth,
                self.init_std,
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class LearnablePromptEncoder(nn.Module):
    """Learnable context vectors + deep prompt tokens, run through the frozen CLIP text encoder.

    Only the parameters of this module train; the text transformer, token and positional embeddings,
    ``ln_final`` and ``text_projection`` are read from the frozen backbone at every call.

    Forward computation (as ``AnomalyCLIP_PromptLearner`` + ``encode_text_learn`` of the official code):
    token embeddings of ``SOT X..X <phrase> EOT`` with the ``X`` embeddings replaced by the sentence's
    context vectors, plus the positional embedding; text block ``i`` (1-based) for ``2 <= i <= depth``
    first overwrites token positions ``1 .. deep_prompt_length`` of its input with the ``(i-1)``-th set
    of deep tokens; causal attention mask as CLIP; feature = ``ln_final`` of the EOT token (argmax of
    the token ids) ``@ text_projection``, L2-normalised.

    The official prompt learner also holds ``compound_prompt_projections`` (``Linear(width, 896)``
    clones) that its forward never uses; they do not change any output and are not reproduced.

    Args:
        backbone: the frozen CLIP whose text encoder is used.
        prompt_set: sentence and parameter shapes.
    """

    def __init__(self, backbone: FrozenCLIP, prompt_set: LearnablePromptSet) -> None:
        super().__init__()
        clip = backbone.clip
        for attribute in ("transformer", "token_embedding", "positional_embedding", "ln_final", "attn_mask"):
            if getattr(clip, attribute, None) is None:
                raise ValueError(
                    f"backbone '{backbone.model_name}' has no text attribute '{attribute}'; learnable "
                    "prompts need an open_clip CLIP with a built-in text transformer"
                )
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise ValueError(
                f"backbone '{backbone.model_name}' pools text with '{clip.text_pool_type}', not the EOT "
                "(argmax) token; unsupported"
            )
        self.prompt_set = prompt_set
        self._backbone = [backbone]  # a list keeps the frozen backbone out of this module's parameters
        width = int(clip.ln_final.weight.shape[0])
        num_text_layers = len(clip.transformer.resblocks)
        depth = int(prompt_set.deep_prompt_depth)
        if depth > num_text_layers:
            raise ValueError(
                f"prompts.deep_prompt_depth={depth} exceeds the {num_text_layers} text blocks of backbone "
                f"'{backbone.model_name}'; set prompts.deep_prompt_depth<={num_text_layers}"
            )
        n_ctx = int(prompt_set.context_length)
        normal, anomalous = prompt_set.sentences()
        tokens = backbone.tokenize(normal + anomalous)
        placeholder = backbone.tokenize([PLACEHOLDER_WORD])[0, 1]
        if n_ctx and not bool((tokens[:, 1 : 1 + n_ctx] == placeholder).all()):
            raise ValueError(f"prompt set '{prompt_set.name}': the context placeholders did not tokenise 1:1")
        if bool((tokens[:, -1] != 0).any()):
            raise ValueError(f"prompt set '{prompt_set.name}': sentences exceed the text context length")
        with torch.no_grad():
            embedded = clip.token_embedding(tokens).float()
        # Fixed parts of the sentences, derived from the frozen backbone (not checkpointed).
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("token_ids", tokens, persistent=False)
        std = float(prompt_set.init_std)
        self.context_normal = nn.Parameter(torch.randn(n_ctx, width) * std)
        self.context_anomalous = nn.Parameter(torch.randn(n_ctx, width) * std)
        self.deep_prompts = nn.Parameter(
            torch.randn(max(depth - 1, 0), prompt_set.deep_prompt_length, width) * std
        )
        self.deep_prompt_depth = depth

    @property
    def backbone(self) -> FrozenCLIP:
        return self._backbone[0]

    def sentence_embeddings(self) -> Tensor:
        """``[2, L, W]`` input token embeddings (normal, anomalous) with the context vectors in place."""
        context = torch.stack([self.context_normal, self.context_anomalous]).to(self.token_prefix.dtype)
        return torch.cat([self.token_prefix, context, self.token_suffix], dim=1)

    def forward(self) -> Tensor:
        """``[2, D]`` unit-norm text features (row 0 normal, row 1 anomalous)."""
        features = encode_deep_prompted_text(
            self.backbone,
            self.sentence_embeddings(),
            self.token_ids,
            list(self.deep_prompts),
            fp16=self.prompt_set.deep_prompt_fp16,
        )
        return F.normalize(features, dim=-1)


def encode_deep_prompted_text(
    backbone: FrozenCLIP,
    embeddings: Tensor,
    token_ids: Tensor,
    deep_prompts: Sequence[Tensor],
    fp16: bool = True,
    truncate: bool = False,
) -> Tensor:
    """Run input token embeddings through the frozen text tower with deep prompt tokens (not normalised).

    As ``encode_text_learn`` of the AnomalyCLIP code base (shared by FAPrompt): ``embeddings`` ``[S, L, W]``
    (learned context vectors already in place) plus the positional embedding; before text block ``i``
    (1-based) for ``2 <= i <= len(deep_prompts) + 1`` the token positions ``1 .. n`` are overwritten with
    ``deep_prompts[i - 2]`` (``[n, W]``, shared by all sentences); causal mask as CLIP; ``ln_final`` of the
    EOT token (argmax of ``token_ids``) ``@ text_projection``. Differentiable with respect to
    ``embeddings`` and ``deep_prompts``.

    Args:
        backbone: the frozen CLIP.
        embeddings: ``[S, L, W]`` input token embeddings.
        token_ids: ``[S, L]`` the token ids (their argmax is the EOT position).
        deep_prompts: one ``[n, W]`` tensor per prompted block, for blocks 2, 3, ...
        fp16: round the deep tokens through float16 where they are inserted, as the official code
            (``.half()`` inside an otherwise float32 model); the cast back rounds each sentence's
            gradient too.
        truncate: run only the positions up to the last EOT token. With CLIP's causal mask nothing after
            it reaches an EOT output, so this is exact up to float summation order and much faster for
            short prompts.
    """
    clip = backbone.clip
    transformer = clip.transformer
    length = embeddings.shape[1]
    if truncate:
        length = int(token_ids.argmax(dim=-1).max()) + 1
    mask = clip.attn_mask
    if mask is not None and length != mask.shape[0]:
        mask = mask[:length, :length]
    # The stream's type (float32 in fp32 and mixed precision): float32 embeddings and prompts enter it.
    x = backbone.stream_tokens(embeddings[:, :length]) + backbone.stream_tokens(
        clip.positional_embedding[:length]
    )
    seq_first = not getattr(transformer, "batch_first", True)
    for index, block in enumerate(transformer.resblocks, start=1):
        if 2 <= index <= len(deep_prompts) + 1:
            deep = deep_prompts[index - 2]
            deep = deep.unsqueeze(0).expand(x.shape[0], -1, -1)
            if fp16:
                deep = deep.half()  # the official rounding; the cast back also rounds the gradient
            deep = deep.to(x.dtype)
            x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1] :]], dim=1)
        if seq_first:
            x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        else:
            x = block(x, attn_mask=mask)
    return backbone._project_end_tokens(x, token_ids.argmax(dim=-1), embeddings.dtype)
