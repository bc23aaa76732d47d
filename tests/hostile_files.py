"""Builders of files people should not be able to hurt the project with (shared by unit and entry-point
tests: ``from hostile_files import bomb_png``)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A real 1x1 PNG whose header claims ``width`` x ``height``: ~70 bytes on disk, whatever it declares
    (decoding 100000x100000 would allocate ~10 GB)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # Signature (8) + IHDR length (4) + b"IHDR" (4), then width, height; the CRC covers type + 13 bytes.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path
