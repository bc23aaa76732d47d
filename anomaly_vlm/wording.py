"""How counts are worded in messages: ``1 image``, ``2 images``."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is one.

    Args:
        count: how many.
        noun: the singular (``"image"``).
        plural: the plural where it is not ``noun + "s"`` (``"entries"``).

    Returns:
        ``"1 image"``, ``"0 images"``, ``"3 entries"``.
    """
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"
