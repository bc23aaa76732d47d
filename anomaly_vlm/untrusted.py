"""Reading files that someone else made, without letting them run code or exhaust memory.

Detectors, checkpoints, dataset descriptions (``meta.json``, split files) and uploads are handed over
by colleagues, model hubs and bug reports. Everything that reads them goes through here:

* :func:`read_json` -- refuses a file over a size limit before reading it, and a document nested
  deeper than a limit (a thousand-deep ``[[[...]]]`` would otherwise end in a ``RecursionError`` or
  hand a structure to code that walks it recursively);
* :func:`sha256_file` -- the checksum that saved artefacts record for each file they consist of;
* :func:`load_torch_file` -- ``torch.load`` with ``weights_only=True`` and an explicit allow-list, so a
  pickle that names any other type is refused with the type's name and nothing in it runs.

Errors are :class:`UntrustedFileError` (a ``ValueError``), whose message names the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: JSON files people hand over are a few kilobytes (a detector.json) to some megabytes (a meta.json of
#: a large dataset, Real-IAD split files); 256 MB leaves room for any real one and refuses a bomb.
MAX_JSON_BYTES = 256 * 1024 * 1024
#: No format read here nests deeper than 8 levels; 64 leaves room and stops hostile nesting.
MAX_JSON_DEPTH = 64


class UntrustedFileError(ValueError):
    """A handed-over file that is refused: too large, too deeply nested, tampered or unsafe to unpickle."""


def read_json(
    path: str | Path,
    what: str = "JSON file",
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a JSON file that may come from anyone, within size and nesting limits.

    Args:
        path: the file.
        what: how the error names the file (``"detector.json"``, ``"meta.json"``).
        max_bytes: refuse larger files before reading a byte of them.
        max_depth: refuse documents whose arrays/objects nest deeper.

    Raises:
        FileNotFoundError: no such file (callers word their own "not found").
        UntrustedFileError: too large, too deep, or not valid JSON (the message names the file).
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UntrustedFileError(
            f"{what} {path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit for this file"
        )
    text = path.read_bytes()
    depth = _nesting_depth(text)
    if depth > max_depth:
        raise UntrustedFileError(
            f"{what} {path} nests {depth} levels deep, over the limit of {max_depth}: not a file this "
            "project writes or reads"
        )
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise UntrustedFileError(f"{what} {path} is not valid JSON: {error}") from None


# Strings may hold brackets; remove them (escapes included) before counting nesting.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _nesting_depth(text: bytes) -> int:
    """Deepest bracket nesting of a JSON text, counted without parsing (no recursion, linear time)."""
    depth = deepest = 0
    for char in _JSON_STRING.sub(b'""', text):
        if char in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif char in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


#: A saved run config is some kilobytes.
MAX_YAML_BYTES = 4 * 1024 * 1024


def read_yaml_config(
    path: str | Path,
    what: str = "YAML file",
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
):
    """An OmegaConf config from a YAML file that may come from anyone.

    Refused before OmegaConf builds it: a file over ``max_bytes``, nesting deeper than ``max_depth``,
    and any alias (``*name``): aliases let a few lines expand into gigabytes ("billion laughs") once
    the document is copied into a config, and the configs this project writes never contain one.
    YAML tags that name Python objects are refused by the safe loader OmegaConf uses.
    """
    import yaml
    from omegaconf import OmegaConf

    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UntrustedFileError(
            f"{what} {path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit for this file"
        )
    depth = deepest = 0
    try:
        for event in yaml.parse(path.read_text(), Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise UntrustedFileError(
                    f"{what} {path} uses a YAML alias (*{event.anchor}), which is refused"
                )
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                deepest = max(deepest, depth)
                if deepest > max_depth:
                    raise UntrustedFileError(f"{what} {path} nests deeper than {max_depth} levels")
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
        return OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, UntrustedFileError):
            raise
        raise UntrustedFileError(f"{what} {path} is not a readable config: {_first_line(error)}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, what: str) -> None:
    """Refuse a file whose content is not the one recorded (truncated, replaced or edited)."""
    path = Path(path)
    if not path.is_file():
        raise UntrustedFileError(f"{what}: {path} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise UntrustedFileError(
            f"{what}: {path} does not match its recorded SHA-256 (recorded {expected[:16]}..., "
            f"file has {actual[:16]}...): it was truncated, replaced or edited"
        )


#: What Lightning may write into a checkpoint besides tensors and plain containers: hyperparameters
#: saved with ``save_hyperparameters`` come as an ``AttributeDict`` (a dict subclass, no behaviour).
def lightning_checkpoint_types() -> list[type]:
    """The allow-list of non-builtin types a Lightning checkpoint of this project may hold."""
    from lightning.fabric.utilities.data import AttributeDict

    return [AttributeDict]


def load_torch_file(path: str | Path, what: str | None = None, allowed: Iterable[Any] = ()) -> Any:
    """``torch.load`` that never runs code from the file.

    Loads with ``weights_only=True``: tensors, containers and plain values only, plus the types in
    ``allowed`` (for example :func:`lightning_checkpoint_types`). A file whose pickle names any other
    type is refused, naming that type, before anything in it is called.

    Args:
        path: the file.
        what: how the error names the file (default its path), e.g. ``"ckpt_path=<path>"``.
        allowed: extra types (classes) the file may construct.

    Raises:
        FileNotFoundError: no such file.
        UntrustedFileError: the file needs a type outside the allow-list, or is not a torch file.
    """
    import pickle

    import torch

    label = what or str(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        names = forbidden_globals(str(error))
        if names:
            raise UntrustedFileError(
                f"{label} holds {', '.join(names)}, which is not data: refused without running anything "
                "(only tensors and plain values are loaded from files)"
            ) from None
        raise UntrustedFileError(f"{label} is not a readable torch file: {_first_line(error)}") from None
    except (RuntimeError, EOFError) as error:
        raise UntrustedFileError(f"{label} is not a readable torch file: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# torch words a refused global as "Unsupported global: GLOBAL os.system" (and similar for reduce ops).
_GLOBAL_IN_ERROR = re.compile(r"(?:GLOBAL|global)\s+([\w.]+)")


def forbidden_globals(message: str) -> list[str]:
    """The type names a refused ``weights_only`` load reports in its error message."""
    return sorted(set(_GLOBAL_IN_ERROR.findall(message)))
