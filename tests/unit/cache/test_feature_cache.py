"""The feature cache: hits and misses, keys, bypass, damaged entries, rounded storage, eviction, cleaning."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from anomaly_vlm.cache import FeatureCache, FeatureCacheError
from anomaly_vlm.cache.__main__ import main as cache_cli


def _entry_files(cache: FeatureCache) -> list:
    return sorted(item.path for item in cache.entries())


def test_second_pass_reads_everything_and_is_identical(tmp_path, images, make_extractor):
    pixels, digests = images
    cache = FeatureCache(tmp_path / "cache")
    extractor = make_extractor()
    cold = cache.extract(extractor, pixels, digests)
    assert extractor.images_encoded == 6
    assert (cache.stats.hits, cache.stats.misses) == (0, 6)
    warm_cache = FeatureCache(tmp_path / "cache")  # another job on the same folder
    warm = warm_cache.extract(extractor, pixels[[3, 1, 5]], [digests[i] for i in (3, 1, 5)])
    assert extractor.images_encoded == 6  # nothing encoded again
    assert (warm_cache.stats.hits, warm_cache.stats.misses) == (3, 0)
    direct = make_extractor().frozen_features(pixels)
    for name, value in direct.items():
        assert torch.equal(cold[name], value)
        assert torch.equal(warm[name], value[[3, 1, 5]])
    assert "3 hits, 0 misses" in warm_cache.summary()


def test_a_partly_cached_batch_encodes_only_the_missing_images(tmp_path, images, make_extractor):
    pixels, digests = images
    cache = FeatureCache(tmp_path / "cache")
    extractor = make_extractor()
    cache.extract(extractor, pixels[:2], digests[:2])
    features = cache.extract(extractor, pixels, digests)
    assert extractor.images_encoded == 6  # 2 + the 4 new ones
    assert torch.equal(features["tokens"], make_extractor().frozen_features(pixels)["tokens"])


def test_the_key_is_the_content_not_the_path(tmp_path, images, make_extractor, make_images):
    pixels, digests = images
    copy, copy_digests = make_images(tmp_path / "elsewhere", 6)  # same seed: same bytes, other paths
    assert copy_digests == digests
    cache = FeatureCache(tmp_path / "cache")
    extractor = make_extractor()
    cache.extract(extractor, pixels, digests)
    cache.extract(extractor, copy, copy_digests)
    assert extractor.images_encoded == 6


@pytest.mark.parametrize(
    "changed",
    [
        {"spec": {"taps": [1, 3]}},
        {"backbone": {"identity": "fake:random:seed1"}},
        {"backbone": {"image_size": 32}},
    ],
)
def test_anything_that_changes_the_features_changes_the_key(
    tmp_path, images, changed, make_extractor, make_backbone
):
    pixels, digests = images
    FeatureCache(tmp_path / "cache").extract(make_extractor(), pixels, digests)
    if "backbone" in changed:
        other = make_extractor(backbone=make_backbone(**changed["backbone"]))
    else:
        other = make_extractor(spec=changed["spec"])
    FeatureCache(tmp_path / "cache").extract(other, pixels, digests)
    assert other.images_encoded == 6


def test_images_without_a_file_and_uncacheable_methods_bypass(tmp_path, images, make_extractor):
    pixels, digests = images
    cache = FeatureCache(tmp_path / "cache")
    extractor = make_extractor()
    mixed = [digests[0], None, digests[2]]
    first = cache.extract(extractor, pixels[:3], mixed)
    second = cache.extract(extractor, pixels[:3], mixed)
    assert extractor.images_encoded == 3 + 1  # the image without a digest is encoded both times
    assert torch.equal(first["tokens"], second["tokens"])
    assert cache.stats.bypassed == 2 and len(_entry_files(cache)) == 2

    learned = make_extractor()
    learned.cacheable = False
    cache.extract(learned, pixels, digests)
    cache.extract(learned, pixels, digests)
    assert learned.images_encoded == 12

    disabled = FeatureCache(tmp_path / "off", enabled=False)
    cache.extract(extractor, pixels, None)
    disabled.extract(extractor, pixels, digests)
    assert not (tmp_path / "off").exists()
    assert "disabled" in disabled.summary()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_entries_are_discarded_and_recomputed(tmp_path, images, caplog, damage, make_extractor):
    pixels, digests = images
    cache = FeatureCache(tmp_path / "cache")
    extractor = make_extractor()
    expected = cache.extract(extractor, pixels[:2], digests[:2])
    victim = _entry_files(cache)[0]
    with open(victim, "rb") as handle:
        data = handle.read()
    damaged = {
        "truncate": data[: len(data) // 2],
        "flip": data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:],
        "empty": b"",
    }
    with open(victim, "wb") as handle:
        handle.write(damaged[damage])
    with caplog.at_level(logging.WARNING):
        again = cache.extract(extractor, pixels[:2], digests[:2])
    assert extractor.images_encoded == 3  # one recomputed
    assert cache.stats.corrupt == 1 and "damaged entry" in caplog.text
    assert torch.equal(again["tokens"], expected["tokens"])
    assert os.path.getsize(victim) == len(data)  # rewritten whole
    cache.extract(extractor, pixels[:2], digests[:2])
    assert extractor.images_encoded == 3


def test_float16_storage_gives_the_same_values_cold_and_warm(tmp_path, images, make_extractor):
    pixels, digests = images
    exact = FeatureCache(tmp_path / "exact")
    rounded = FeatureCache(tmp_path / "rounded", dtype="float16")
    extractor = make_extractor()
    reference = exact.extract(extractor, pixels, digests)["tokens"]
    cold = rounded.extract(extractor, pixels, digests)["tokens"]
    warm = FeatureCache(tmp_path / "rounded", dtype="float16").extract(extractor, pixels, digests)["tokens"]
    assert torch.equal(cold, warm) and cold.dtype == torch.float32
    assert torch.equal(cold, reference.half().float())
    assert 0 < (cold - reference).abs().max() < 1e-2
    assert rounded.size_bytes() < 0.75 * exact.size_bytes()


def test_bad_settings_are_named():
    with pytest.raises(FeatureCacheError, match="feature_cache.dtype='int8'"):
        FeatureCache(dtype="int8")
    with pytest.raises(FeatureCacheError, match="feature_cache.max_gb=0"):
        FeatureCache(max_gb=0)


def test_least_recently_used_entries_are_evicted(tmp_path, make_extractor, make_images):
    pixels, digests = make_images(tmp_path / "images", 10)
    cache = FeatureCache(tmp_path / "cache", max_gb=None)
    extractor = make_extractor()
    cache.extract(extractor, pixels, digests)
    paths = {
        digest: cache.entry_path(
            cache.namespace(extractor), cache.entry_key(cache.namespace(extractor), digest)
        )
        for digest in digests
    }
    now = time.time()
    for age, digest in enumerate(reversed(digests)):  # digests[0] is the oldest
        os.utime(paths[digest], (now - 1000 - age * 10, now - 1000 - age * 10))
    cache.extract(extractor, pixels[:1], digests[:1])  # a hit makes the oldest the most recent
    entry_size = os.path.getsize(paths[digests[0]])
    limited = FeatureCache(tmp_path / "cache", max_gb=entry_size * 6.5 / 1e9)
    assert limited.evict() == 5  # 10 entries -> at most 90 % of 6.5 entries
    survivors = {digest for digest in digests if paths[digest].exists()}
    assert survivors == {digests[0], *digests[-4:]}


def test_writes_past_the_limit_trigger_eviction(tmp_path, make_extractor, make_images):
    pixels, digests = make_images(tmp_path / "images", 12)
    probe = FeatureCache(tmp_path / "probe")
    probe.extract(make_extractor(), pixels[:1], digests[:1])
    entry_size = probe.size_bytes()
    cache = FeatureCache(tmp_path / "cache", max_gb=entry_size * 4.5 / 1e9)
    for index in range(12):
        cache.extract(make_extractor(), pixels[index : index + 1], digests[index : index + 1])
    assert cache.size_bytes() <= entry_size * 4.5 and cache.stats.evicted >= 7


def test_stale_temporaries_are_removed_and_clean_empties_the_folder(tmp_path, images, capsys, make_extractor):
    pixels, digests = images
    cache = FeatureCache(tmp_path / "cache", max_gb=100)
    cache.extract(make_extractor(), pixels, digests)
    stale = next(iter(_entry_files(cache)))
    leftover = os.path.join(os.path.dirname(stale), ".x.safetensors.123.tmp")
    open(leftover, "wb").close()
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    cache.evict()
    assert not os.path.exists(leftover)

    cache = FeatureCache(tmp_path / "cache")
    cache.extract(make_extractor(), pixels, digests)
    assert cache_cli(["info", "--dir", str(tmp_path / "cache")]) == 0
    assert "6 images" in capsys.readouterr().out
    assert cache_cli(["clean", "--dir", str(tmp_path / "cache")]) == 0
    assert "removed" in capsys.readouterr().out and not _entry_files(cache)


def test_counts_of_one_are_singular(tmp_path, images, make_extractor, capsys):
    pixels, digests = images
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(make_extractor(), pixels[:1], digests[:1])
    cache.extract(make_extractor(), pixels[:1], digests[:1])
    assert "1 hit, 1 miss," in cache.summary()
    disabled = FeatureCache(tmp_path / "off", enabled=False)
    disabled.extract(make_extractor(), pixels[:1], digests[:1])
    assert "disabled (1 image encoded)" in disabled.summary()
    assert cache_cli(["info", "--dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert ": 1 entry, " in printed and "  1 image  " in printed


def test_memo_computes_a_value_once_per_material(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"flops": 123}

    cache = FeatureCache(tmp_path / "cache")
    assert cache.memo("flops", {"method": "a"}, compute) == {"flops": 123}
    assert FeatureCache(tmp_path / "cache").memo("flops", {"method": "a"}, compute) == {"flops": 123}
    assert len(calls) == 1
    FeatureCache(tmp_path / "cache").memo("flops", {"method": "b"}, compute)
    assert len(calls) == 2
    for path in (tmp_path / "cache" / "values").iterdir():
        path.write_text("{broken")
    FeatureCache(tmp_path / "cache").memo("flops", {"method": "a"}, compute)
    assert len(calls) == 3
    FeatureCache(tmp_path / "off", enabled=False).memo("flops", {"method": "a"}, compute)
    assert len(calls) == 4 and not (tmp_path / "off").exists()
