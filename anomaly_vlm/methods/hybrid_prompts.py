"""Hybrid (static + dynamic) learnable prompts in both CLIP encoders.

AdaCLIP's prompting (Cao et al., ECCV 2024; ``method/adaclip.py`` of caoyunkang/AdaCLIP): learned tokens
enter the first ``depth`` blocks of the image encoder and text blocks ``2 .. depth``. Each block's tokens
are a static learned set (``S``), the image-conditioned tokens of ``n`` linear generators applied to the
prompt-free pooled image embedding (``D``), or their sum (``SD``). Shared so that AdaCLIP and other
compositions (the alignment analysis's ``alignment=adaclip``) use the very same parts.

* Visual side: block 1 gets the block's tokens appended after the patch tokens; blocks ``2 .. depth``
  replace them (:meth:`~anomaly_vlm.backbones.clip.FrozenCLIP.encode_image_prompted`).
* Text side: in text blocks ``2 .. depth`` token positions ``1 .. n`` of every sentence are replaced
  (the block-1 static set exists but is never inserted, as in the official code). A category's text
  features are the prompt ensemble: each sentence L2-normalised, averaged per state, re-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP


class CategoryText:
    """Tokenised prompt ensemble of one category: ``token_ids [S, L]``, the first ``num_normal`` normal."""

    def __init__(self, token_ids: Tensor, num_normal: int) -> None:
        if not 0 < num_normal < len(token_ids):
            raise ValueError("a category needs normal and anomalous sentences")
        self.token_ids = token_ids
        self.num_normal = int(num_normal)


def ensemble(embeddings: Tensor, num_normal: int) -> Tensor:
    """``[2, D]``: per state the mean of the unit sentence embeddings, re-normalised."""
    embeddings = F.normalize(embeddings, dim=-1)
    normal = F.normalize(embeddings[:num_normal].mean(dim=0), dim=-1)
    anomalous = F.normalize(embeddings[num_normal:].mean(dim=0), dim=-1)
    return torch.stack([normal, anomalous])


class HybridPrompts(nn.Module):
    """The learned parts of hybrid prompting: static token sets and dynamic-token generators.

    The parameters are ``visual_static [depth, n, width]``, ``text_static [depth, n, text_width]``,
    ``visual_generator`` and ``text_generator`` (``n`` ``Linear(embed_dim -> width)`` each), created only
    for the enabled kinds (static, dynamic) and branches (visual, text), in that order. A subclass keeps
    these names at its own top level (AdaCLIP's state dict and the authors' released files map to them).

    Args:
        width, text_width, embed_dim: the image encoder's width, the text encoder's, the joint space's.
        prompt_length: tokens per prompted block ``n``.
        prompt_depth: prompted blocks: visual ``1 .. depth``, text ``2 .. depth``.
        static_prompts, dynamic_prompts: the kinds (``S``, ``D``); the constructor does not check that one
            is on (the caller names its own options in the message).
        visual_prompts, text_prompts: the branches.
        prompt_fp16: round the tokens through float16 where they enter the encoders (the official
            ``.half()`` casts; the gradient reaching them is rounded the same way).
        init_std: standard deviation of the static tokens' normal initialisation.
    """

    def __init__(
        self,
        width: int,
        text_width: int,
        embed_dim: int,
        prompt_length: int = 5,
        prompt_depth: int = 4,
        static_prompts: bool = True,
        dynamic_prompts: bool = True,
        visual_prompts: bool = True,
        text_prompts: bool = True,
        prompt_fp16: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.prompt_length = int(prompt_length)
        self.prompt_depth = int(prompt_depth)
        self.static_prompts = bool(static_prompts)
        self.dynamic_prompts = bool(dynamic_prompts)
        self.visual_prompts = bool(visual_prompts)
        self.text_prompts = bool(text_prompts)
        self.prompt_fp16 = bool(prompt_fp16)
        n, depth, std = self.prompt_length, self.prompt_depth, float(init_std)
        if self.static_prompts and self.visual_prompts:
            self.visual_static = nn.Parameter(torch.randn(depth, n, width) * std)
        if self.static_prompts and self.text_prompts:
            # One set per block like the visual side; the first is never inserted (official behaviour).
            self.text_static = nn.Parameter(torch.randn(depth, n, text_width) * std)
        if self.dynamic_prompts and self.visual_prompts:
            self.visual_generator = nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(n))
        if self.dynamic_prompts and self.text_prompts:
            self.text_generator = nn.ModuleList(nn.Linear(embed_dim, text_width) for _ in range(n))

    def _rounded(self, tokens: Tensor) -> Tensor:
        return tokens.half().to(tokens.dtype) if self.prompt_fp16 else tokens

    def _generated(self, generator: nn.ModuleList, pooled: Tensor) -> Tensor:
        return torch.stack([linear(pooled) for linear in generator], dim=1)

    def visual_prompt_tokens(self, pooled: Tensor) -> list[Tensor]:
        """Per prompted block ``[B, n, W]`` (or ``[n, W]`` without dynamic prompts) from the prompt-free
        pooled embedding ``pooled [B, D]``."""
        dynamic = self._generated(self.visual_generator, pooled) if self.dynamic_prompts else None
        blocks = []
        for index in range(self.prompt_depth):
            static = self.visual_static[index] if self.static_prompts else None
            tokens = static if dynamic is None else (dynamic if static is None else dynamic + static)
            blocks.append(self._rounded(tokens))
        return blocks

    def text_prompt_tokens(self, pooled: Tensor | None) -> list[dict[int, Tensor]] | dict[int, Tensor]:
        """Deep text tokens by text block (2..depth): one dict per image with dynamic prompts, else one."""
        static = self.text_static if self.static_prompts else None
        if not self.dynamic_prompts:
            return {index + 1: self._rounded(static[index]) for index in range(1, self.prompt_depth)}
        dynamic = self._generated(self.text_generator, pooled)
        per_image = []
        for tokens in dynamic:
            per_image.append(
                {
                    index + 1: self._rounded(tokens if static is None else tokens + static[index])
                    for index in range(1, self.prompt_depth)
                }
            )
        return per_image

    def encode_prompted_image(self, backbone: FrozenCLIP, pixels: Tensor, pooled: Tensor, layers: list[int]):
        """The image pass with this module's visual tokens (``pixels`` normalised; ``pooled`` the
        prompt-free pooled embedding the dynamic tokens come from); a plain frozen pass without the
        visual branch. Returns the backbone's ``ImageFeatures``."""
        if self.visual_prompts:
            return backbone.encode_image_prompted(
                pixels, self.visual_prompt_tokens(pooled), layers, normalized=True
            )
        with torch.no_grad():
            return backbone.encode_image(pixels, layers, normalized=True)

    def encode_prompted_text(self, backbone: FrozenCLIP, text: CategoryText, pooled: Tensor) -> Tensor:
        """``[B, 2, D]`` unit text features (normal, anomalous) of one category for each image."""
        ids = text.token_ids
        if not self.text_prompts:
            with torch.no_grad():
                plain = backbone.encode_text_deep_prompted(ids, {})
            return ensemble(plain, text.num_normal).unsqueeze(0).expand(len(pooled), -1, -1)
        deep = self.text_prompt_tokens(pooled)
        if isinstance(deep, dict):
            shared = ensemble(backbone.encode_text_deep_prompted(ids, deep), text.num_normal)
            return shared.unsqueeze(0).expand(len(pooled), -1, -1)
        # One run of the sentences of all images: image b's sentences carry image b's dynamic tokens.
        sentences = len(ids)
        stacked = {
            block: torch.cat([tokens[block].unsqueeze(0).expand(sentences, -1, -1) for tokens in deep])
            for block in deep[0]
        }
        encoded = backbone.encode_text_deep_prompted(ids.repeat(len(deep), 1), stacked)
        chunks = encoded.view(len(deep), sentences, -1)
        return torch.stack([ensemble(chunk, text.num_normal) for chunk in chunks])


__all__ = ["CategoryText", "HybridPrompts", "ensemble"]
