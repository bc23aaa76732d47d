"""Counts in messages: singular for one, plural otherwise."""

from __future__ import annotations

import pytest

from anomaly_vlm.wording import counted


@pytest.mark.parametrize(
    ("count", "noun", "plural", "expected"),
    [
        (1, "image", None, "1 image"),
        (0, "image", None, "0 images"),
        (2, "image", None, "2 images"),
        (1, "entry", "entries", "1 entry"),
        (3, "entry", "entries", "3 entries"),
    ],
)
def test_one_is_singular_every_other_count_plural(count, noun, plural, expected):
    assert counted(count, noun, plural) == expected
