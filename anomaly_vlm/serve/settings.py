"""The service's settings and their ``key=value`` command line (the keys of the other entry points' style).

``python -m anomaly_vlm.serve detector=<folder> [detector=<folder2> | detector.<name>=<folder>] ...``:
``detector=`` may repeat; a detector is addressed by its folder's name (for a run's
``detectors/<category>/`` that is the category) unless ``detector.<name>=`` names it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS

RUNTIMES = ("torch", "onnx")
SET_DEPENDENCE = ("refuse", "accept")
#: Detector names are URL path segments: letters, digits, ``-``, ``_`` and ``.`` (not a leading dot).
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
USAGE = (
    "python -m anomaly_vlm.serve detector=<detector folder> [detector=<another> | detector.<name>=<folder>] "
    "[host=127.0.0.1] [port=8000] [runtime=torch|onnx] [max_batch=8] [batching=true] ..."
)


class UsageError(ValueError):
    """A malformed command line or setting (printed as one ``error:`` line)."""


@dataclasses.dataclass
class ServeSettings:
    """What the service serves and its limits.

    Attributes:
        detectors: name -> detector folder.
        host: the address to bind (``127.0.0.1``: this machine only; ``0.0.0.0`` for a reverse proxy on
            another host -- there is no authentication, see the README).
        port: the TCP port.
        runtime: ``torch`` (the detector's PyTorch method) or ``onnx`` (its ``model.onnx`` in onnxruntime).
        device: torch device of the ``torch`` runtime.
        batching: score requests that arrive together as one batch (dynamic batching).
        max_batch: most images one forward pass scores (requests are never split across passes, but a
            request with more images than this runs alone, in chunks).
        batch_wait_ms: how long the first request of a batch waits for others to join.
        max_upload_mb: largest request body; larger gets 413 (checked on the header and while reading).
        max_images: most images one request may send; more gets 413.
        max_image_pixels: most pixels (width x height) of one image, checked on its header before it is
            decoded (decompression bombs); more gets 422.
        max_queue: most images waiting to be scored per detector; a request that would exceed it gets 503.
        request_timeout_s: a request not answered within this many seconds (queue and scoring) gets 503.
        read_timeout_s: most seconds to receive a request's body; a slower client gets 408 and its
            connection is closed, without ever reaching the model worker.
        set_dependence: ``accept`` also serves a detector whose scores depend on the images scored with
            it (transductive MuSc): each request is then scored alone, as its own set, never batched
            with another; ``refuse`` (default) refuses to start with one.
        threads: torch intra-op threads (None: torch's default).
        precision: ``backbone.precision`` the ``torch`` runtime runs the detectors' backbones in (None:
            each one's own; the weights are still checked as saved).
        warmup: score one image per detector before ``/readyz`` turns ready.
        log_level: uvicorn's log level.
    """

    detectors: dict[str, Path]
    host: str = "127.0.0.1"
    port: int = 8000
    runtime: str = "torch"
    device: str = "cpu"
    batching: bool = True
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    max_upload_mb: float = 32.0
    max_images: int = 16
    max_image_pixels: int = 40_000_000
    max_queue: int = 256
    request_timeout_s: float = 30.0
    read_timeout_s: float = 10.0
    set_dependence: str = "refuse"
    threads: int | None = None
    precision: str | None = None
    warmup: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.detectors:
            raise UsageError(f"detector=<folder> is required; usage: {USAGE}")
        for name in self.detectors:
            if not NAME.match(name):
                raise UsageError(
                    f"detector name {name!r} must be 1-64 letters, digits, '-', '_' or '.' (it is a URL "
                    "path segment); name it with detector.<name>=<folder>"
                )
        if self.runtime not in RUNTIMES:
            raise UsageError(f"runtime={self.runtime} must be one of {list(RUNTIMES)}")
        if self.set_dependence not in SET_DEPENDENCE:
            raise UsageError(f"set_dependence={self.set_dependence} must be one of {list(SET_DEPENDENCE)}")
        if self.precision is not None and self.runtime != "torch":
            raise UsageError(
                f"precision={self.precision} is a setting of runtime=torch; an exported graph runs in the "
                "precision it was exported in"
            )
        positive = {
            "port": self.port,
            "max_batch": self.max_batch,
            "max_upload_mb": self.max_upload_mb,
            "max_images": self.max_images,
            "max_image_pixels": self.max_image_pixels,
            "max_queue": self.max_queue,
            "request_timeout_s": self.request_timeout_s,
            "read_timeout_s": self.read_timeout_s,
        }
        for key, value in positive.items():
            if not value > 0:
                raise UsageError(f"{key}={value} must be positive")
        if self.batch_wait_ms < 0:
            raise UsageError(f"batch_wait_ms={self.batch_wait_ms} must be 0 or more")
        if self.max_image_pixels > DEFAULT_MAX_IMAGE_PIXELS * 10:
            raise UsageError(f"max_image_pixels={self.max_image_pixels} is above 1e9; no camera image is")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


_INT = ("port", "max_batch", "max_images", "max_image_pixels", "max_queue", "threads")
_FLOAT = ("batch_wait_ms", "max_upload_mb", "request_timeout_s", "read_timeout_s")
_BOOL = ("batching", "warmup")
_STR = ("host", "runtime", "device", "set_dependence", "log_level", "precision")
KEYS = ("detector", *_STR, *_INT, *_FLOAT, *_BOOL)


def _flag(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise UsageError(f"{key}={value} must be true or false")


def _number(key: str, value: str, kind: type) -> int | float | None:
    if key == "threads" and value.lower() in ("null", "none", ""):
        return None
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{key}={value} is not a{'n integer' if kind is int else ' number'}") from None


def parse(argv: Sequence[str]) -> ServeSettings:
    """``key=value`` arguments -> :class:`ServeSettings` (repeated ``detector=``; ``detector.<name>=``).

    Raises:
        UsageError: an argument that is not ``key=value``, an unknown key, a bad value, a detector name
            given twice, or no detector.
    """
    detectors: dict[str, Path] = {}
    options: dict[str, object] = {}
    for argument in argv:
        key, equals, value = argument.partition("=")
        key = key.lstrip("+")
        if not equals:
            raise UsageError(f"argument '{argument}' is not key=value; usage: {USAGE}")
        if key == "detector" or key.startswith("detector."):
            if not value:
                raise UsageError(f"{key}= needs a detector folder")
            folder = Path(value).expanduser()
            name = key.partition(".")[2] or folder.resolve().name
            if name in detectors:
                raise UsageError(
                    f"two detectors are named {name!r} ({detectors[name]} and {folder}); name them with "
                    "detector.<name>=<folder>"
                )
            detectors[name] = folder
        elif key in _INT:
            options[key] = _number(key, value, int)
        elif key in _FLOAT:
            options[key] = _number(key, value, float)
        elif key in _BOOL:
            options[key] = _flag(key, value)
        elif key == "precision" and value.lower() in ("null", "none", ""):
            options[key] = None
        elif key in _STR:
            options[key] = value
        else:
            raise UsageError(
                f"unknown option '{key}' (options: {', '.join(f'{k}=' for k in KEYS)}, detector.<name>=)"
            )
    return ServeSettings(detectors=detectors, **options)
