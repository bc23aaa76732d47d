"""``python -m anomaly_vlm.deploy.convert detector=<folder> [trust_pickle=true]``: format 1 -> now, in place.

Format-1 detectors kept their state as a pickle (``state.pt``). Conversion first reads it the safe way
(``weights_only``: tensors, flags and lists only), which is all a genuine format-1 state holds, so a
detector this project saved converts without trusting anything. A pickle that names any other type is
refused, naming it; ``trust_pickle=true`` then unpickles it anyway, which runs whatever it names: only
for a file whose source you trust as you would trust a program from it. The result holds no pickle and
records the checksum of every file. Mistakes end with one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from anomaly_vlm.deploy.detector import CONFIG_FILE, DETECTOR_FILE, DETECTOR_FORMAT, Detector, DetectorError
from anomaly_vlm.deploy.state import LEGACY_STATE_FILE, write_category_state
from anomaly_vlm.untrusted import UntrustedFileError, load_torch_file, sha256_file

USAGE = "python -m anomaly_vlm.deploy.convert detector=<folder> [trust_pickle=true]"


def convert_detector(path: str | Path, trust_pickle: bool = False) -> bool:
    """Rewrite a format-1 detector folder in the current format (no pickle); False when it has none.

    A format-1 detector holds no frozen set statistics: one whose scores depend on the batch (APRIL-GAN
    few-shot) then loads only with ``set_dependence="accept"``; saving it again freezes them.

    Raises:
        DetectorError: not a detector, or a state that holds more than data and ``trust_pickle`` is off.
    """
    folder = Path(path).expanduser()
    meta = Detector.read_meta(folder)
    if meta["format"] >= 2:
        return False
    try:
        state = load_torch_file(folder / LEGACY_STATE_FILE, what=f"detector={folder}")
    except FileNotFoundError:
        raise DetectorError(f"detector={folder} has no {LEGACY_STATE_FILE} to convert") from None
    except UntrustedFileError as error:
        if not trust_pickle:
            raise DetectorError(
                f"{error}; add trust_pickle=true only if you trust where it came from"
            ) from None
        state = Detector.read_state(folder, meta, trust_pickle=True)
    try:
        written = write_category_state(state, folder)
    except TypeError as error:
        raise DetectorError(f"detector={folder}: {error}") from None
    meta["format"] = DETECTOR_FORMAT
    meta["files"] = {name: sha256_file(folder / name) for name in [CONFIG_FILE, *written]}
    staged = folder / f".{DETECTOR_FILE}.tmp"
    staged.write_text(json.dumps(meta, indent=2))
    staged.replace(folder / DETECTOR_FILE)
    (folder / LEGACY_STATE_FILE).unlink()
    return True


def main(argv: Sequence[str] | None = None) -> int:
    options: dict[str, str] = {}
    for argument in sys.argv[1:] if argv is None else argv:
        key, equals, value = argument.partition("=")
        if not equals or key not in ("detector", "trust_pickle"):
            print(f"error: unexpected argument '{argument}'; usage: {USAGE}", file=sys.stderr)
            return 1
        options[key] = value
    trust = options.get("trust_pickle", "false").lower()
    if not options.get("detector") or trust not in ("true", "false"):
        print(f"error: usage: {USAGE}", file=sys.stderr)
        return 1
    try:
        converted = convert_detector(options["detector"], trust_pickle=trust == "true")
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    done = "converted to" if converted else "already in"
    print(f"{options['detector']}: {done} detector format {DETECTOR_FORMAT} (no pickle)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
