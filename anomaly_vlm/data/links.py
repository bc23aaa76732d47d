"""Symbolic links in dataset folders: followed when reading, reported when they lead outside, never
written through.

Datasets are often assembled from links (a category folder linked in from a shared drive, images
linked instead of copied), so a link is read like the file it points to. A link that resolves outside
the dataset root means the data comes from somewhere the root does not show, which is worth one
warning per root -- how many such links there are and the first one -- rather than one per file.

The project writes into a dataset folder only where it generates one (``data=synthetic``); those
writes go through :func:`replace_link` / :func:`open_new`, so a link planted there is replaced, never
written through.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def outside_links(root: str | Path) -> list[tuple[Path, Path]]:
    """``(link, target)`` of every symlink under ``root`` that resolves outside it, sorted by path.

    Hidden entries are skipped (no reader lists them) and linked folders are not descended into (a link
    is counted once, not once per file behind it). Links that cannot be resolved (loops) are skipped.
    """
    root = Path(root)
    real_root = root.resolve()
    found: list[tuple[Path, Path]] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                try:
                    target = Path(entry.path).resolve()
                except (OSError, RuntimeError):
                    continue
                if not target.is_relative_to(real_root):
                    found.append((Path(entry.path), target))
            elif entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
    return sorted(found)


def warn_outside_links(root: str | Path, what: str = "dataset root") -> int:
    """Log one warning when symlinks under ``root`` lead outside it; returns how many do."""
    root = Path(root)
    if not root.is_dir():
        return 0
    links = outside_links(root)
    if links:
        link, target = links[0]
        log.warning(
            "%s %s holds %d symlink(s) that lead outside it; they are followed (read). First: %s -> %s",
            what,
            root,
            len(links),
            link,
            target,
        )
    return len(links)


def replace_link(path: str | Path) -> Path:
    """Remove ``path`` if it is a symlink, so the next write creates a file there instead of writing
    through the link to wherever it points."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    return path


def open_new(path: str | Path, mode: str = "w", append: bool = False):
    """Open ``path`` for writing without following a symlink there.

    A link at ``path`` is replaced first (:func:`replace_link`); ``O_NOFOLLOW`` then refuses one planted
    in between (``OSError``) instead of writing through it. Without ``append`` the file is truncated.
    """
    path = replace_link(path)
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_APPEND if append else os.O_TRUNC
    return os.fdopen(os.open(path, flags, 0o644), mode)
