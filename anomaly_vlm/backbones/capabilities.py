"""What a backbone family offers and what a method needs from one, readable without building either.

A backbone class states its :class:`BackboneCapabilities` as a class attribute, a method class its
:class:`BackboneNeeds`; :func:`backbone_problem` compares the two from the ``_target_`` classes of a
composed config, so a text-needing method asked to run on a vision-only backbone (DINOv2) fails at
compose time in one line, before any weights load.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BackboneCapabilities:
    """What a backbone family offers to methods.

    Attributes:
        family: short family name for messages (``CLIP``, ``DINOv2``).
        text_tower: encodes text into the image embedding space (prompts, text classifiers).
        patch_tokens: :meth:`patch_tokens(images, blocks, norm)` gives ``[B, N, W]`` patch tokens at
            chosen blocks (1-based), CLS and registers removed.
        clip_tokens: the token-level CLIP API (``embed_patches``, ``run_blocks``, ``ln_post``, ``proj``,
            V-V attention, visual prompts) that window-, stream- and prompt-based methods drive.
    """

    family: str
    text_tower: bool
    patch_tokens: bool
    clip_tokens: bool


@dataclasses.dataclass(frozen=True)
class BackboneNeeds:
    """What a method needs from its backbone (``AnomalyMethod.backbone_needs``).

    Attributes:
        text_tower: the method encodes text prompts.
        patch_tokens: the method reads patch tokens at chosen blocks through ``patch_tokens``.
        clip_tokens: the method drives CLIP's token-level API.
    """

    text_tower: bool = True
    patch_tokens: bool = False
    clip_tokens: bool = True


#: Why a method needs each capability, for the message.
_NEED_WORDS = {
    "text_tower": "a text tower (it encodes text prompts)",
    "clip_tokens": "CLIP's token-level image API",
    "patch_tokens": "patch tokens at chosen blocks",
}


def unmet_needs(needs: BackboneNeeds, capabilities: BackboneCapabilities) -> list[str]:
    """The needs (field names of :class:`BackboneNeeds`) the backbone does not meet, in field order."""
    return [
        field.name
        for field in dataclasses.fields(needs)
        if getattr(needs, field.name) and not getattr(capabilities, field.name)
    ]


def backbone_problem(
    method_name: str,
    needs: BackboneNeeds,
    capabilities: BackboneCapabilities,
    backbone_name: str | None = None,
) -> str | None:
    """One line saying why ``method_name`` cannot run on the backbone (None when it can)."""
    unmet = unmet_needs(needs, capabilities)
    if not unmet:
        return None
    which = f"backbone={backbone_name}" if backbone_name else "the backbone"
    wanted = " and ".join(_NEED_WORDS[name] for name in unmet)
    return (
        f"method={method_name} needs {wanted}, which {which} ({capabilities.family}) does not have; "
        "use a CLIP backbone (e.g. backbone=vit_l14_336) or a method that reads only image patches "
        "(method=anomalydino)"
    )
