"""Advisory file locks shared by every process that uses a cache folder.

``fcntl.flock`` locks belong to an open file and vanish when the process dies (killed jobs never leave
a stale lock behind), and they work between the jobs of a joblib or SLURM sweep on one machine or on a
shared file system that supports them (local disks, NFSv4, Lustre and GPFS with flock enabled).
Lock files are never deleted: removing a lock file while another process waits on it would let a
third process lock a fresh file of the same name, and both would believe they hold the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Yields True when the lock is held. With ``blocking=False`` it yields False at once when another
    process holds it (the caller then skips the work instead of waiting).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def file_locks(paths: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Hold exclusive locks on several files, taken in sorted order so that two processes asking for
    overlapping sets can never deadlock."""
    with contextlib.ExitStack() as stack:
        for path in sorted({str(path) for path in paths}):
            stack.enter_context(file_lock(path))
        yield
