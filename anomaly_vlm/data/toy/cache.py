"""The locked disk cache of the synthetic dataset: location, manifest, lock and stale output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from anomaly_vlm.data.links import open_new
from anomaly_vlm.data.toy.render import SYNTHETIC_CATEGORIES
from anomaly_vlm.untrusted import read_json

MANIFEST_NAME = ".synthetic.json"
_PENDING_NAME = ".synthetic.pending.json"
_LOCK_NAME = ".synthetic.lock"
_TMP_PREFIX = ".synthetic-tmp-"


def default_synthetic_root(cache_dir: str | Path | None = None) -> Path:
    """Where the synthetic dataset is cached by default.

    Args:
        cache_dir: Base cache directory. ``None`` means ``$ANOMALY_VLM_CACHE`` when set, else
            ``$XDG_CACHE_HOME/anomaly_vlm`` or ``~/.cache/anomaly_vlm``.

    Returns:
        ``<cache_dir>/synthetic`` (not created).
    """
    if cache_dir is None:
        env = os.environ.get("ANOMALY_VLM_CACHE")
        if env:
            cache_dir = env
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            cache_dir = Path(xdg or Path.home() / ".cache") / "anomaly_vlm"
    return Path(cache_dir).expanduser() / "synthetic"


def _read_json(path: Path) -> dict | None:
    try:
        # The root may be a folder someone else filled (data.root): a planted manifest is bounded too.
        data = read_json(path, what="synthetic dataset manifest")
    except (OSError, ValueError):  # UntrustedFileError is a ValueError: refused means "not ours"
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    # Write-then-rename so readers never see a truncated file. The temporary file is opened without
    # following a symlink, and the rename replaces a link at ``path`` itself: no write lands elsewhere.
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp) as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _is_complete(root: Path, manifest: dict) -> bool:
    found = _read_json(root / MANIFEST_NAME)
    if found is None or (root / _PENDING_NAME).exists():
        return False
    if found.get("version") != manifest["version"] or found.get("args") != manifest["args"]:
        return False
    return all((root / cat).is_dir() for cat in manifest["args"]["categories"])


def _recorded_categories(record: dict | None) -> set[str]:
    if record is None:
        return set()
    cats = record.get("categories")
    if cats is None:
        cats = record.get("args", {}).get("categories", [])
    # Only known category names: a hand-edited manifest must never make us delete other folders.
    return {c for c in cats if isinstance(c, str) and c in SYNTHETIC_CATEGORIES}


def _remove_previous_output(root: Path, cats: Sequence[str], overwrite: bool) -> None:
    """Delete what earlier runs of this generator left in ``root`` (called under the lock)."""
    for leftover in root.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    owned = _recorded_categories(_read_json(root / MANIFEST_NAME))
    owned |= _recorded_categories(_read_json(root / _PENDING_NAME))
    # A symlink in a category's place is in the way too (even a dangling one): it is removed, never
    # generated into.
    foreign = [c for c in cats if ((root / c).exists() or (root / c).is_symlink()) and c not in owned]
    if foreign and not overwrite:
        raise FileExistsError(
            f"{root} already holds {foreign} that the synthetic generator did not write; "
            "pass overwrite=True to replace them or choose another root"
        )
    # The manifest goes first so that a crash during the deletions cannot look complete.
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for cat in sorted(owned | set(foreign)):
        path = root / cat
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (root / _PENDING_NAME).unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive_lock(root: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent generation is the caller's problem.
        yield
        return
    # A symlink planted as the lock file is replaced rather than opened (and created) at its target.
    with open_new(root / _LOCK_NAME, "a", append=True) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
