"""Resolution of pretrained CLIP weights: local file -> local cache -> download.

Build machines and many cluster nodes have no network. open_clip alone would sit in a retry loop for
tens of seconds before failing with a generic message; here a missing weight is detected up front and
reported in under five seconds with what was searched and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

from anomaly_vlm.untrusted import UntrustedFileError, forbidden_globals

# open_clip's default weight file name on the Hugging Face hub and its safetensors twin.
_HF_DEFAULT_FILENAME = "open_clip_pytorch_model.bin"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_NETWORK_PROBE_SECONDS = 3.0


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable from here."""


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache that is searched (``HF_HUB_CACHE`` unless given)."""
    return Path(cache_dir) if cache_dir else Path(hf_constants.HF_HUB_CACHE)


def weights_identity(model_name: str, pretrained: str | None, seed: int = 0) -> str:
    """A short string that changes whenever the weights change (used to key on-disk caches).

    A tag is its own identity; a file is identified by its size and a hash of its first and last MiB
    (cheap, and enough to tell two checkpoints apart); random weights by their seed.
    """
    if pretrained is None:
        return f"{model_name}:random:seed{seed}"
    path = Path(os.path.expanduser(str(pretrained)))
    if path.is_file():
        digest = hashlib.sha256()
        size = path.stat().st_size
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read(1 << 20))
        return f"{model_name}:file:{size}:{digest.hexdigest()[:16]}"
    return f"{model_name}:{pretrained}"


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith((".", "~")) or value.endswith(_WEIGHT_SUFFIXES)


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    # open_clip writes 'org/repo/' (default file name) or 'org/repo/file.bin'.
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or _HF_DEFAULT_FILENAME
    names = []
    if filename == _HF_DEFAULT_FILENAME:
        names.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.append(filename.rsplit(".", 1)[0] + ".safetensors")
    names.append(filename)
    return repo_id, names


def find_cached_weights(model_name: str, tag: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Look for the file of an open_clip tag in the local caches, without touching the network."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    if cfg.get("hf_hub"):
        repo_id, names = _hf_candidates(cfg["hf_hub"])
        for name in names:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=str(hf_cache_dir(cache_dir)))
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    if cfg.get("url"):
        url_cache = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        candidate = url_cache / os.path.basename(urlparse(cfg["url"]).path)
        if candidate.is_file():
            return candidate
    return None


def network_available(timeout: float = _NETWORK_PROBE_SECONDS) -> bool:
    """True when the weight hub answers a TCP connection within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` short-cuts to False. The probe runs in a thread so a hanging DNS lookup cannot
    stretch it past the timeout.
    """
    if hf_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hf_constants.ENDPOINT).hostname
    port = 443 if hf_constants.ENDPOINT.startswith("https") else 80
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])


def _missing_message(model_name: str, tag: str, cache_dir: str | os.PathLike | None, reason: str) -> str:
    return (
        f"Pretrained weights for model '{model_name}' with tag '{tag}' are not available: {reason}.\n"
        f"  Searched the Hugging Face cache at: {hf_cache_dir(cache_dir)}\n"
        "  Fix one of:\n"
        "    - on a machine with network, run `make weights` (downloads every backbone config's weights\n"
        "      into the cache), then copy the cache folder here or set HF_HUB_CACHE to it;\n"
        "    - point to a local file: `backbone.pretrained=/path/to/open_clip_model.safetensors`;\n"
        "    - for a smoke test without weights: `backbone=tiny` or `backbone.pretrained=null` (random init)."
    )


def resolve_weights(
    model_name: str, pretrained: str | None, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """Return the local weight file for ``pretrained`` (None means random initialisation).

    Order: an existing local path; the cached file of an open_clip tag; a download when the hub is
    reachable. Fails fast with :class:`WeightsNotFoundError` otherwise.

    Args:
        model_name: open_clip model name, e.g. ``ViT-L-14-336``.
        pretrained: an open_clip tag (``openai``, ``laion400m_e31``), a file path, or None.
        cache_dir: Hugging Face cache folder; the default hub cache when None.
    """
    if pretrained is None or str(pretrained).lower() in {"", "none", "null"}:
        return None
    pretrained = str(pretrained)
    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        return path
    if not open_clip.get_pretrained_cfg(model_name, pretrained):
        if _looks_like_path(pretrained):
            raise WeightsNotFoundError(f"backbone.pretrained file does not exist: {pretrained}")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"backbone.pretrained='{pretrained}' is neither a file nor a known open_clip tag for "
            f"'{model_name}'. Known tags: {tags or 'none (use a file path or null)'}"
        )
    cached = find_cached_weights(model_name, pretrained, cache_dir)
    if cached is not None:
        return cached
    if not network_available():
        reason = "no cached copy and no network (HF_HUB_OFFLINE set or the hub is unreachable)"
        raise WeightsNotFoundError(_missing_message(model_name, pretrained, cache_dir, reason))
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    try:
        target = open_clip.download_pretrained(cfg, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as error:  # the hub raises many types; the user needs one message
        raise WeightsNotFoundError(
            _missing_message(model_name, pretrained, cache_dir, f"download failed ({error})")
        ) from error
    if not target or not os.path.isfile(target):
        raise WeightsNotFoundError(
            _missing_message(model_name, pretrained, cache_dir, "download gave no file")
        )
    return Path(target)


def load_weights(model: torch.nn.Module, weight_file: str | os.PathLike) -> None:
    """Load a weight file into an open_clip model without running code from it.

    Weight files are handed over like any artefact (a colleague's fine-tune, a hub mirror): they are read
    as safetensors or with ``weights_only``, and a pickle naming anything but data is refused by name.
    """
    import pickle

    try:
        open_clip.load_checkpoint(model, str(weight_file), weights_only=True)
    except pickle.UnpicklingError as error:
        names = forbidden_globals(str(error))
        what = f"holds {', '.join(names)}, which is not data" if names else "is not a readable weight file"
        raise UntrustedFileError(
            f"backbone.pretrained={weight_file} {what}: refused without running it"
        ) from None
