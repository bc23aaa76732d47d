"""Cache entries: exact round trip, rounded storage, and damaged files are recognised."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.cache.entry import (
    CorruptEntryError,
    decode_entry,
    encode_entry,
    read_entry,
    write_entry_atomic,
)


def _features() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randn(1, 50, 32, generator=generator),
        "global": torch.randn(1, 8, generator=generator, dtype=torch.float64),
        "index": torch.arange(4)[None],
    }


def test_round_trip_is_exact():
    features = _features()
    decoded = decode_entry("k1", encode_entry("k1", features))
    assert decoded.keys() == features.keys()
    for name, value in features.items():
        assert decoded[name].dtype == value.dtype
        assert torch.equal(decoded[name], value)


def test_float16_storage_halves_the_size_and_restores_the_dtype():
    features = {"tokens": torch.randn(1, 200, 64)}
    exact, rounded = encode_entry("k", features), encode_entry("k", features, torch.float16)
    assert len(rounded) < 0.55 * len(exact)
    decoded = decode_entry("k", rounded)["tokens"]
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, features["tokens"].half().float())
    assert not torch.equal(decoded, features["tokens"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-1], "truncated"),
        (lambda data: data[:5], "shorter than"),
        (lambda data: data[:-3] + bytes([data[-3] ^ 1]) + data[-2:], "checksum"),
        (lambda data: data[:8] + b"{not json" + data[17:], "header"),
        (lambda data: data + b"\0", "truncated"),
    ],
)
def test_damaged_entries_are_refused(damage, message):
    data = encode_entry("k", _features())
    with pytest.raises(CorruptEntryError, match=message):
        decode_entry("k", damage(data))


def test_an_entry_filed_under_another_key_is_refused():
    with pytest.raises(CorruptEntryError, match="key"):
        decode_entry("other", encode_entry("k", _features()))


def test_atomic_write_leaves_no_temporary_and_read_reports_absence(tmp_path):
    path = tmp_path / "a" / "b.safetensors"
    assert read_entry(path, "k") is None
    write_entry_atomic(path, encode_entry("k", _features()))
    assert [item.name for item in path.parent.iterdir()] == ["b.safetensors"]
    features, _ = read_entry(path, "k")
    assert torch.equal(features["tokens"], _features()["tokens"])
