"""A content-addressed disk cache of frozen image features, shared by the jobs of a sweep.

Every method's image encoder is frozen, so ``frozen_features(images)`` (see
:mod:`anomaly_vlm.methods.contract`) is a pure function of the backbone, the preprocessing, the
method's feature spec and the image. A sweep over prompts, shots and seeds, the few-shot references of
every draw, and every epoch of a trained method would otherwise push the same images through the same
encoder again and again. Here each image's features are stored once, under

    key = sha256(namespace, sha256(image file bytes))
    namespace = sha256(backbone architecture, weights identity, positional embedding, input size,
                       normalisation, image loader, library versions, feature spec, storage dtype)

in ``<dir>/<namespace[:16]>/<key[:2]>/<key>.safetensors`` (``spec.json`` beside describes the
namespace). Images that are not a file's pixels (a mosaic of four images) have no digest and bypass
the cache; so do methods that declare ``cacheable = False`` (image features that depend on learned
parameters).

Concurrency: an entry is written to a temporary file and renamed into place, so a reader never sees a
partial entry; a process that misses takes the entry's lock (``fcntl.flock`` on one of 4096 lock
files, chosen by the key) before computing, and looks again once it holds it, so two jobs never
compute the same entry at the same time: the second one waits and reads. Damaged entries fail their
checksum and are discarded and recomputed. The folder is kept under ``max_gb`` by evicting the least
recently used entries (a hit refreshes the entry's modification time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import PIL
import torch
from torch import Tensor

from anomaly_vlm.cache.entry import (
    ENTRY_FORMAT,
    ENTRY_SUFFIX,
    CorruptEntryError,
    encode_entry,
    read_entry,
    write_entry_atomic,
)
from anomaly_vlm.cache.locks import file_lock, file_locks
from anomaly_vlm.wording import counted

log = logging.getLogger(__name__)

#: How images become pixels before the backbone (``anomaly_vlm.data.image_io.load_image``); change it
#: whenever that function changes what it returns, so old entries stop matching.
IMAGE_LOADER = "pil-rgb-bicubic-squash/1"
STORAGE_DTYPES = {"float32": None, "float16": torch.float16}
LOCK_FOLDER = ".locks"
SPEC_FILE = "spec.json"
_LOCK_STRIPES_HEX = 3  # 16**3 = 4096 lock files at most
_EVICT_DOWN_TO = 0.9  # evict to 90 % of the limit, so the next writes do not evict again at once
_STALE_TEMPORARY_S = 3600.0


class FeatureCacheError(ValueError):
    """A ``feature_cache.*`` setting is invalid."""


def default_cache_root() -> Path:
    """``$ANOMALY_VLM_CACHE`` or ``~/.cache/anomaly_vlm`` (the project's cache folder)."""
    return Path(os.environ.get("ANOMALY_VLM_CACHE", "~/.cache/anomaly_vlm")).expanduser()


def _tensor_digest(value: Tensor) -> str:
    return hashlib.sha256(value.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def backbone_fingerprint(backbone: Any) -> dict[str, Any]:
    """What identifies a frozen backbone's image features, read from a ``FrozenCLIP``.

    The weights identity (an open_clip tag, a weight file's size and hash, or the random seed) names the
    weights; the positional embedding's digest also covers the input size and its interpolation mode;
    mean and std are the normalisation. A backbone running in another precision than fp32 computes other
    features: its resolved ``backbone.precision`` is a field of its own (absent for fp32, so fp32 caches
    written before precisions existed stay valid).
    """
    fingerprint = {
        "architecture": backbone.model_name,
        "weights": backbone.identity,
        "image_size": int(backbone.image_size),
        "positional_embedding": _tensor_digest(backbone.positional_embedding),
        "mean": [round(float(value), 8) for value in backbone.pixel_mean.flatten()],
        "std": [round(float(value), 8) for value in backbone.pixel_std.flatten()],
    }
    precision = getattr(backbone, "precision", "fp32")
    if precision != "fp32":
        fingerprint["precision"] = precision
    return fingerprint


@dataclasses.dataclass
class CacheStats:
    """What one process's cache did; printed at the end of a run."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    corrupt: int = 0
    written_bytes: int = 0
    write_errors: int = 0
    evicted: int = 0


class FeatureCache:
    """Disk cache of ``frozen_features`` per image (config group ``feature_cache``).

    Args:
        dir: cache folder (default ``<cache_dir>/features``).
        enabled: False computes every feature (nothing read or written).
        max_gb: size limit of the folder in GB (1e9 bytes); least recently used entries are evicted.
            None means no limit.
        dtype: ``float32`` stores the features exactly; ``float16`` halves the size (rounded features:
            metrics move slightly, see the README).
    """

    def __init__(
        self,
        dir: str | os.PathLike | None = None,
        enabled: bool = True,
        max_gb: float | None = 20.0,
        dtype: str = "float32",
    ) -> None:
        if dtype not in STORAGE_DTYPES:
            raise FeatureCacheError(
                f"feature_cache.dtype={dtype!r} is not supported; choose one of {sorted(STORAGE_DTYPES)}"
            )
        if max_gb is not None and float(max_gb) <= 0:
            raise FeatureCacheError(f"feature_cache.max_gb={max_gb} must be positive (or null: no limit)")
        self.dir = Path(dir).expanduser() if dir else default_cache_root() / "features"
        self.enabled = bool(enabled)
        self.max_bytes = None if max_gb is None else int(float(max_gb) * 1e9)
        self.dtype = dtype
        self.stats = CacheStats()
        self._namespaces: dict[str, str] = {}
        self._written_since_check = 0

    # ----- keys -----------------------------------------------------------------------------------
    def namespace(self, extractor: Any) -> str:
        """The hash of everything but the image that determines ``extractor``'s features."""
        material = {
            "format": ENTRY_FORMAT,
            "backbone": backbone_fingerprint(extractor.backbone),
            "loader": IMAGE_LOADER,
            "versions": {"torch": torch.__version__, "pillow": PIL.__version__},
            "feature_spec": extractor.feature_spec(),
            "storage_dtype": self.dtype,
        }
        text = json.dumps(material, sort_keys=True, default=str)
        namespace = self._namespaces.get(text)
        if namespace is None:
            namespace = hashlib.sha256(text.encode()).hexdigest()
            self._namespaces[text] = namespace
            self._write_spec(namespace, material)
        return namespace

    @staticmethod
    def entry_key(namespace: str, digest: str) -> str:
        return hashlib.sha256(f"{namespace}:{digest}".encode()).hexdigest()

    def entry_path(self, namespace: str, key: str) -> Path:
        return self.dir / namespace[:16] / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def _lock_path(self, key: str) -> Path:
        return self.dir / LOCK_FOLDER / f"{key[:_LOCK_STRIPES_HEX]}.lock"

    def _write_spec(self, namespace: str, material: dict) -> None:
        if not self.enabled:
            return
        path = self.dir / namespace[:16] / SPEC_FILE
        if path.is_file():
            return
        try:
            write_entry_atomic(path, json.dumps(material, indent=2, sort_keys=True, default=str).encode())
        except OSError as error:
            log.warning("feature cache: cannot write %s (%s)", path, error)

    # ----- lookups ----------------------------------------------------------------------------------
    def _load(self, path: Path, key: str, locked: bool = False) -> dict[str, Tensor] | None:
        """The entry's features, None when absent or damaged (a damaged entry is deleted).

        ``locked``: the caller holds the entry's lock (taking it again would block on itself).
        """
        try:
            found = read_entry(path, key)
        except CorruptEntryError as error:
            self.stats.corrupt += 1
            log.warning("feature cache: discarding damaged entry %s (%s); recomputing it", path, error)
            if locked:
                self._discard(path, getattr(error, "status", None))
            else:
                with file_lock(self._lock_path(key)):
                    self._discard(path, getattr(error, "status", None))
            return None
        if found is None:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least-recently-used order is modification time
        return found[0]

    @staticmethod
    def _discard(path: Path, status: os.stat_result | None) -> None:
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return
        # Another process may have replaced the damaged file with a good one meanwhile.
        if status is None or (current.st_ino, current.st_mtime_ns) == (status.st_ino, status.st_mtime_ns):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, keys: list[str]) -> Iterator[None]:
        """Hold the locks of ``keys``; without a usable lock folder, carry on unlocked (and say so)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_locks(self._lock_path(key) for key in keys))
            except OSError as error:
                log.warning("feature cache: cannot lock entries in %s (%s)", self.dir, error)
            yield

    def _store(self, path: Path, key: str, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Write one image's features; returns them as a later read will return them."""
        data = encode_entry(key, features, STORAGE_DTYPES[self.dtype])
        try:
            write_entry_atomic(path, data)
        except OSError as error:  # full disk, read-only folder: keep running without caching
            self.stats.write_errors += 1
            log.warning("feature cache: cannot write %s (%s); continuing without it", path, error)
        else:
            self.stats.written_bytes += len(data)
            self._written_since_check += len(data)
        if STORAGE_DTYPES[self.dtype] is None:
            return features
        # Rounded storage: return what a later read returns, so cold and warm runs agree exactly.
        return {
            name: value.to(STORAGE_DTYPES[self.dtype]).to(value.dtype) if value.is_floating_point() else value
            for name, value in features.items()
        }

    def extract(
        self,
        extractor: Any,
        images: Tensor,
        digests: Sequence[str | None] | None,
        compute: Callable[[Tensor], dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``extractor.frozen_features(images)``, reading what is cached and storing what is not.

        Args:
            extractor: the method's torch model (``frozen_features``, ``feature_spec``, ``cacheable``,
                ``backbone``).
            images: ``[B, 3, H, W]`` input batch.
            digests: per image the content digest of its file, or None for an image that is not a
                file's pixels (it bypasses the cache); None for the whole batch bypasses it too.
            compute: what computes features of a sub-batch (default ``extractor.frozen_features``).

        Returns:
            The features of every image, batch axis first, in the order of ``images`` and on their device.
        """
        compute = compute or extractor.frozen_features
        count = int(images.shape[0])
        if digests is not None and len(digests) != count:
            raise ValueError(f"{len(digests)} digests for a batch of {count} images")
        if not self.enabled or not getattr(extractor, "cacheable", False) or digests is None:
            self.stats.bypassed += count
            return compute(images)
        namespace = self.namespace(extractor)
        keys = [self.entry_key(namespace, digest) if digest else None for digest in digests]
        paths = [self.entry_path(namespace, key) if key else None for key in keys]
        found: list[dict[str, Tensor] | None] = [
            self._load(path, key) if key else None for path, key in zip(paths, keys, strict=True)
        ]
        missing = [index for index in range(count) if keys[index] and found[index] is None]
        uncached = [index for index in range(count) if not keys[index]]
        self.stats.bypassed += len(uncached)
        if missing:
            with self._locked([keys[index] for index in missing]):
                # Another job may have written them while this one waited for the locks.
                for index in missing:
                    found[index] = self._load(paths[index], keys[index], locked=True)
                still = [index for index in missing if found[index] is None]
                self.stats.hits += len(missing) - len(still)
                self._compute_into(found, still + uncached, images, compute, keys, paths)
        elif uncached:
            self._compute_into(found, uncached, images, compute, keys, paths)
        self.stats.hits += count - len(missing) - len(uncached)
        self._maybe_evict()
        names = sorted(found[0])
        return {name: torch.cat([item[name] for item in found]).to(images.device) for name in names}

    def _compute_into(
        self,
        found: list[dict[str, Tensor] | None],
        indices: list[int],
        images: Tensor,
        compute: Callable[[Tensor], dict[str, Tensor]],
        keys: list[str | None],
        paths: list[Path | None],
    ) -> None:
        if not indices:
            return
        indices = sorted(indices)
        with torch.no_grad():
            computed = compute(images[indices])
        for position, index in enumerate(indices):
            features = {name: value[position : position + 1] for name, value in computed.items()}
            if keys[index] is not None:
                self.stats.misses += 1
                features = self._store(paths[index], keys[index], features)
            found[index] = features

    def memo(self, name: str, material: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """A JSON value computed once per ``material`` and kept beside the features.

        For figures whose measurement runs the image encoder although the features are cached, e.g. a
        method's FLOPs per image (torch's counter executes the forward pass): a warm run then does no
        encoder pass at all. ``material`` must name everything the value depends on.
        """
        if not self.enabled:
            return compute()
        text = json.dumps({"name": name, "material": material}, sort_keys=True, default=str)
        key = hashlib.sha256(text.encode()).hexdigest()
        path = self.dir / "values" / f"{key}.json"

        def stored() -> tuple[bool, Any]:
            try:
                payload = json.loads(path.read_text())
                return payload["key"] == key, payload["value"]
            except (OSError, ValueError, KeyError, TypeError):
                return False, None

        found, value = stored()
        if found:
            return value
        with self._locked([key]):
            found, value = stored()
            if found:
                return value
            value = compute()
            try:
                write_entry_atomic(path, json.dumps({"key": key, "name": name, "value": value}).encode())
            except OSError as error:
                log.warning("feature cache: cannot write %s (%s)", path, error)
        return value

    # ----- size -------------------------------------------------------------------------------------
    def _maybe_evict(self) -> None:
        if self.max_bytes is None or self._written_since_check < max(self.max_bytes // 20, 1):
            return
        self.evict()

    def entries(self) -> list[os.DirEntry]:
        """Every entry file under the cache folder."""
        found: list[os.DirEntry] = []
        stack = [self.dir]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    for item in listing:
                        if item.is_dir(follow_symlinks=False):
                            if item.name != LOCK_FOLDER:
                                stack.append(Path(item.path))
                        elif item.name.endswith(ENTRY_SUFFIX):
                            found.append(item)
            except FileNotFoundError:
                continue
        return found

    def size_bytes(self) -> int:
        """Bytes held by the entries (temporary files and lock files aside)."""
        total = 0
        for item in self.entries():
            try:
                total += item.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
        return total

    def evict(self) -> int:
        """Delete least recently used entries until the folder holds at most ~90 % of ``max_gb``.

        One process evicts at a time (the others skip); temporary files left by killed jobs are
        removed on the way. Returns the number of entries deleted.
        """
        self._written_since_check = 0
        if not self.enabled or self.max_bytes is None or not self.dir.is_dir():
            return 0
        deleted = 0
        with file_lock(self.dir / LOCK_FOLDER / "evict.lock", blocking=False) as held:
            if not held:
                return 0
            self._remove_stale_temporaries()
            listed = []
            for item in self.entries():
                try:
                    status = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                listed.append((status.st_mtime_ns, status.st_size, item.path))
            total = sum(size for _, size, _ in listed)
            if total <= self.max_bytes:
                return 0
            target = int(self.max_bytes * _EVICT_DOWN_TO)
            for _, size, path in sorted(listed):
                if total <= target:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                total -= size
                deleted += 1
        self.stats.evicted += deleted
        if deleted:
            log.info(
                "feature cache: evicted %s least recently used from %s",
                counted(deleted, "entry", "entries"),
                self.dir,
            )
        return deleted

    def _remove_stale_temporaries(self) -> None:
        cutoff = time.time() - _STALE_TEMPORARY_S
        for path in self.dir.glob("*/*/.*.tmp"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue

    def summary(self) -> str:
        """One line for the end of a run: hits, misses, bypassed, damaged, written, folder size."""
        stats = self.stats
        if not self.enabled:
            return f"feature cache: disabled ({counted(stats.bypassed, 'image')} encoded)"
        limit = "no limit" if self.max_bytes is None else f"{self.max_bytes / 1e9:g} GB"
        parts = [
            counted(stats.hits, "hit"),
            counted(stats.misses, "miss", "misses"),
            f"{stats.bypassed} bypassed",
        ]
        if stats.corrupt:
            parts.append(f"{counted(stats.corrupt, 'damaged entry', 'damaged entries')} recomputed")
        if stats.write_errors:
            parts.append(counted(stats.write_errors, "failed write"))
        if stats.evicted:
            parts.append(f"{stats.evicted} evicted")
        return (
            f"feature cache: {', '.join(parts)}; wrote {_megabytes(stats.written_bytes)}; "
            f"size {_megabytes(self.size_bytes())} of {limit} in {self.dir}"
        )


def _megabytes(value: int) -> str:
    return f"{value / 1e6:.1f} MB"
