"""Content digests of image files: the per-image part of a feature-cache key.

The key uses the file's bytes, not its path, so a renamed or copied dataset keeps its cache entries
and an image edited in place gets new ones.
"""

from __future__ import annotations

import hashlib
import os
import threading

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int, int], str] = {}
_memo_lock = threading.Lock()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the file's bytes.

    Remembered per process by (path, inode, size, modification time), so a training epoch does not
    re-hash files it already hashed while the same files stay untouched.
    """
    path = os.fspath(path)
    status = os.stat(path)
    memo_key = (path, status.st_ino, status.st_size, status.st_mtime_ns)
    with _memo_lock:
        known = _memo.get(memo_key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _memo_lock:
        _memo[memo_key] = value
    return value
