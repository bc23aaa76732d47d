"""A method's category state: everything ``setup_category`` and training put on the model.

Methods keep their category state in different shapes (text classifier buffers, WinCLIP's reference
patches and window memories, APRIL-GAN's list of memory banks, AnomalyCLIP's scoring text), so the
snapshot is generic: every buffer and trainable parameter outside the frozen backbone, and every
public attribute of the method's modules that holds a tensor, a list of tensors, a flag or None. The frozen
backbone is never stored; it is rebuilt from its reference and checked by digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from anomaly_vlm.runtime import default_file_mode
from anomaly_vlm.untrusted import read_json


def _backbone_ids(method: nn.Module) -> tuple[set[int], set[int]]:
    backbone = method.backbone
    tensors = {id(t) for t in backbone.parameters()} | {id(t) for t in backbone.buffers()}
    modules = {id(m) for m in backbone.modules()}
    return tensors, modules


def _is_state_value(value: object) -> bool:
    # Flags such as "the text classifier is set" are category state too.
    if value is None or isinstance(value, Tensor | bool):
        return True
    return isinstance(value, list | tuple) and all(isinstance(item, Tensor) for item in value)


def category_state(method: nn.Module) -> dict[str, object]:
    """Snapshot (CPU copies) of the method's state outside the frozen backbone."""
    tensors, modules = _backbone_ids(method)
    state: dict[str, object] = {}
    for name, buffer in method.named_buffers(remove_duplicate=False):
        if id(buffer) not in tensors:
            state[f"buffer:{name}"] = buffer.detach().cpu().clone()
    for name, parameter in method.named_parameters():
        if parameter.requires_grad and id(parameter) not in tensors:
            state[f"parameter:{name}"] = parameter.detach().cpu().clone()
    for module_name, module in method.named_modules():
        if id(module) in modules:
            continue
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or attribute == "training" or not _is_state_value(value):
                continue
            key = f"attribute:{module_name}:{attribute}"
            if isinstance(value, Tensor):
                state[key] = value.detach().cpu().clone()
            elif value is None or isinstance(value, bool):
                state[key] = value
            else:
                state[key] = [item.detach().cpu().clone() for item in value]
    return state


def load_category_state(method: nn.Module, state: dict[str, object]) -> None:
    """Put a :func:`category_state` snapshot back on a freshly built method of the same config."""
    device = next(method.parameters()).device
    buffers = dict(method.named_buffers(remove_duplicate=False))
    parameters = dict(method.named_parameters())
    named_modules = dict(method.named_modules())
    for key, value in state.items():
        kind, _, rest = key.partition(":")
        if kind == "buffer":
            module_name, _, name = rest.rpartition(".")
            owner = named_modules[module_name]
            if rest not in buffers:
                raise KeyError(f"the method has no buffer {rest!r}")
            owner._buffers[name] = value.to(device)
        elif kind == "parameter":
            if rest not in parameters:
                raise KeyError(f"the method has no parameter {rest!r}")
            with torch.no_grad():
                parameters[rest].copy_(value.to(device))
        elif kind == "attribute":
            module_name, _, attribute = rest.partition(":")
            owner = named_modules[module_name]
            if isinstance(value, Tensor):
                value = value.to(device)
            elif isinstance(value, list | tuple):
                value = [item.to(device) for item in value]
            object.__setattr__(owner, attribute, value)
        else:
            raise KeyError(f"unknown state entry {key!r}")


def backbone_digest(backbone: nn.Module) -> str:
    """SHA-256 of the frozen backbone's weights (names, shapes, dtypes and bytes), first 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


#: State entries that hold the frozen set statistics of the method's set-level step (``<prefix><name>``),
#: stored beside the method's state and given back to it with ``freeze_set_statistics``.
SET_STATISTICS_PREFIX = "set_statistics:"


def with_set_statistics(state: dict[str, object], statistics: dict[str, Tensor]) -> dict[str, object]:
    """``state`` plus the set statistics to freeze (CPU copies), as entries of the state file."""
    extra = {
        f"{SET_STATISTICS_PREFIX}{name}": value.detach().cpu().clone() for name, value in statistics.items()
    }
    return {**state, **extra}


def split_set_statistics(state: dict[str, object]) -> tuple[dict[str, object], dict[str, Tensor]]:
    """(the method's state, the frozen set statistics) of a state read back from a detector.

    Raises:
        ValueError: a set statistic that is not a tensor.
    """
    method_state, statistics = {}, {}
    for key, value in state.items():
        if key.startswith(SET_STATISTICS_PREFIX):
            if not isinstance(value, Tensor):
                raise ValueError(f"state entry {key!r} is not a tensor")
            statistics[key[len(SET_STATISTICS_PREFIX) :]] = value
        else:
            method_state[key] = value
    return method_state, statistics


# ----- the state on disk: tensors in safetensors, the structure in a small JSON index (no pickle) -----
#: Tensors of the state, by entry name (``<key>`` or ``<key>#<i>`` for the i-th tensor of a list).
STATE_TENSORS_FILE = "state.safetensors"
#: Which entries are tensors, lists of tensors, flags or None, and the tensor names that hold them.
STATE_INDEX_FILE = "state.json"
#: The format of a detector before format 2: the whole state as one pickle (refused unless trusted).
LEGACY_STATE_FILE = "state.pt"


def write_category_state(state: dict[str, object], folder: Path) -> list[str]:
    """Write a :func:`category_state` snapshot without pickle; returns the names of the files written.

    Tensors go into ``state.safetensors``; ``state.json`` records, per entry, the tensor name(s) or the
    plain value (``None``/``true``/``false``), so reading it back needs nothing but a JSON parser and
    safetensors, neither of which can run code from the file.
    """
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    index: dict[str, dict] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            tensors[key] = value.contiguous()
            index[key] = {"tensor": key}
        elif isinstance(value, list | tuple):
            names = [f"{key}#{position}" for position in range(len(value))]
            tensors.update({name: item.contiguous() for name, item in zip(names, value, strict=True)})
            index[key] = {"tensors": names}
        elif value is None or isinstance(value, bool):
            index[key] = {"value": value}
        else:
            raise TypeError(f"category state entry {key!r} is a {type(value).__name__}, not storable")
    save_file(tensors, str(folder / STATE_TENSORS_FILE))
    # safetensors creates the file private (0600); it is shared like the rest of the detector folder.
    os.chmod(folder / STATE_TENSORS_FILE, default_file_mode())
    (folder / STATE_INDEX_FILE).write_text(json.dumps({"entries": index}, indent=1))
    return [STATE_TENSORS_FILE, STATE_INDEX_FILE]


def read_category_state(folder: Path) -> dict[str, object]:
    """Read what :func:`write_category_state` wrote (checksums are checked by the caller first).

    Raises:
        ValueError: an index that does not describe the tensors file (names the file and entry).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index_path = folder / STATE_INDEX_FILE
    entries = read_json(index_path, what=STATE_INDEX_FILE).get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{index_path} has no 'entries' object")
    try:
        tensors = load_file(str(folder / STATE_TENSORS_FILE))
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{folder / STATE_TENSORS_FILE} is not a readable safetensors file: {error}"
        ) from None
    state: dict[str, object] = {}
    for key, entry in entries.items():
        names = [entry["tensor"]] if "tensor" in entry else entry.get("tensors")
        if names is None:
            value = entry.get("value")
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{index_path}: entry {key!r} holds {value!r}, not a flag or null")
            state[key] = value
            continue
        absent = [name for name in names if name not in tensors]
        if absent:
            raise ValueError(
                f"{index_path}: entry {key!r} names tensors {absent} that {STATE_TENSORS_FILE} lacks"
            )
        values = [tensors[name] for name in names]
        state[key] = values[0] if "tensor" in entry else values
    return state
