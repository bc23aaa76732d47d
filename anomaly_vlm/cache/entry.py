"""One cache entry on disk: the frozen features of one image as a safetensors file, self-checking.

An entry is trusted only when all of these hold: the safetensors header parses, the file is exactly as
long as the header says (a job killed while writing, or a full disk, leaves a short file), the entry
names the key it was looked up under, and a SHA-256 over the tensor layout and bytes matches the one
stored in its metadata (bit rot, a partial copy). Anything else is :class:`CorruptEntryError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

ENTRY_FORMAT = "anomaly-vlm-features/1"
ENTRY_SUFFIX = ".safetensors"
_HEADER_LENGTH = struct.Struct("<Q")


class CorruptEntryError(ValueError):
    """A cache entry is truncated, damaged or not the entry it claims to be."""


def _checksum(layout: list, payload: bytes | memoryview) -> str:
    digest = hashlib.sha256(json.dumps(layout, sort_keys=True).encode())
    digest.update(payload)
    return digest.hexdigest()


def _layout(header: Mapping[str, dict]) -> list:
    return sorted(
        [name, info["dtype"], list(info["shape"]), list(info["data_offsets"])]
        for name, info in header.items()
        if name != "__metadata__"
    )


def encode_entry(key: str, features: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> bytes:
    """Serialise one image's features (batch axis of 1 kept) for ``key``.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors at that precision; the original dtype is
    recorded and restored on read.
    """
    stored = {}
    original = {}
    for name, value in features.items():
        value = value.detach().to("cpu")
        original[name] = str(value.dtype).removeprefix("torch.")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        stored[name] = value.contiguous().clone()
    # Serialise once without the checksum to learn the exact layout, then stamp it into the metadata.
    metadata = {"format": ENTRY_FORMAT, "key": key, "dtypes": json.dumps(original, sort_keys=True)}
    draft = save_safetensors(stored, metadata={**metadata, "checksum": "0" * 64})
    header, payload = _split(draft)
    return save_safetensors(stored, metadata={**metadata, "checksum": _checksum(_layout(header), payload)})


def _split(data: bytes) -> tuple[dict, memoryview]:
    """Parse the header and return it with the tensor bytes; checks the length the header implies."""
    if len(data) < _HEADER_LENGTH.size:
        raise CorruptEntryError(f"{len(data)} bytes, shorter than a safetensors header")
    (length,) = _HEADER_LENGTH.unpack_from(data)
    start = _HEADER_LENGTH.size + length
    if length > 100_000_000 or start > len(data):
        raise CorruptEntryError(f"header of {length} bytes does not fit in {len(data)} bytes")
    try:
        header = json.loads(bytes(data[_HEADER_LENGTH.size : start]))
        ends = [info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise CorruptEntryError(f"unreadable header ({error})") from error
    expected = start + max(ends, default=0)
    if len(data) != expected:
        raise CorruptEntryError(f"{len(data)} bytes where the header describes {expected} (truncated?)")
    return header, memoryview(data)[start:]


def decode_entry(key: str, data: bytes) -> dict[str, Tensor]:
    """The features stored in ``data`` for ``key``; :class:`CorruptEntryError` when not trustworthy."""
    header, payload = _split(data)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != ENTRY_FORMAT:
        raise CorruptEntryError(f"format {metadata.get('format')!r}, expected {ENTRY_FORMAT!r}")
    if metadata.get("key") != key:
        raise CorruptEntryError(f"entry holds key {metadata.get('key')!r}, not {key!r}")
    if metadata.get("checksum") != _checksum(_layout(header), payload):
        raise CorruptEntryError("checksum mismatch")
    try:
        tensors = load_safetensors(data)
        original = json.loads(metadata["dtypes"])
        return {name: value.to(getattr(torch, original[name])) for name, value in tensors.items()}
    except Exception as error:  # safetensors raises its own error types; all mean "do not use"
        raise CorruptEntryError(f"cannot decode tensors ({error})") from error


def read_entry(path: Path, key: str) -> tuple[dict[str, Tensor], os.stat_result] | None:
    """Read and check an entry: None when absent; :class:`CorruptEntryError` when damaged.

    Also returns the status of the file that was read, so a caller that discards a damaged entry can
    make sure it deletes that file and not a good one another process put there meanwhile.
    """
    try:
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return decode_entry(key, data), status
    except CorruptEntryError as error:
        error.status = status  # type: ignore[attr-defined]
        raise


def write_entry_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
