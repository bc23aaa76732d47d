"""Methods reach CLIP only through the backbone's token-level API, never into open_clip's vision tower."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "anomaly_vlm"


def test_no_module_outside_backbones_touches_the_vision_tower() -> None:
    pattern = re.compile(r"\bvisual\.")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "backbones" not in path.relative_to(PACKAGE).parts
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not offenders, f"'visual.' outside anomaly_vlm/backbones: {offenders}"
