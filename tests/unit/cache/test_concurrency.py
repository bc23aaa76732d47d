"""Processes sharing one cache folder: no entry computed twice at once, no half-written entry read."""

from __future__ import annotations

import multiprocessing
import time

import torch

from anomaly_vlm.cache import FeatureCache, file_lock
from anomaly_vlm.cache.entry import CorruptEntryError, encode_entry, read_entry, write_entry_atomic

# fork: the workers are closures over test fixtures (spawn would re-import this module by name).
_CONTEXT = multiprocessing.get_context("fork")


def test_parallel_jobs_compute_each_entry_once(tmp_path, images, make_extractor):
    pixels, digests = images
    log = tmp_path / "encoded.log"
    workers = 4
    barrier = _CONTEXT.Barrier(workers)
    results = _CONTEXT.Queue()

    def job(rank: int) -> None:
        torch.set_num_threads(1)
        extractor = make_extractor(delay=0.15, log=log)
        cache = FeatureCache(tmp_path / "cache")
        order = [(index + 2 * rank) % len(digests) for index in range(len(digests))]  # overlapping orders
        barrier.wait()
        parts = [
            cache.extract(
                extractor, pixels[order[start : start + 3]], [digests[i] for i in order[start : start + 3]]
            )
            for start in (0, 3)
        ]
        tokens = torch.cat([part["tokens"] for part in parts])
        restored = torch.empty_like(tokens)
        restored[order] = tokens
        results.put((rank, restored.numpy(), cache.stats.hits, cache.stats.misses))

    processes = [_CONTEXT.Process(target=job, args=(rank,)) for rank in range(workers)]
    for process in processes:
        process.start()
    collected = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    encoded = sum(int(line.split()[1]) for line in log.read_text().splitlines())
    assert encoded == len(digests)  # every image encoded exactly once across the four jobs
    assert sum(misses for *_, misses in collected) == len(digests)
    assert sum(hits for *_, hits, _ in collected) == workers * len(digests) - len(digests)
    expected = make_extractor().frozen_features(pixels)["tokens"]
    for _, tokens, *_ in collected:
        assert torch.equal(torch.from_numpy(tokens), expected)


def test_readers_never_see_a_half_written_entry(tmp_path):
    path = tmp_path / "entry.safetensors"
    payloads = [encode_entry("k", {"tokens": torch.full((1, 512, 1024), float(value))}) for value in range(2)]
    write_entry_atomic(path, payloads[0])
    stop = _CONTEXT.Event()

    def writer() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            write_entry_atomic(path, payloads[index % 2])

    process = _CONTEXT.Process(target=writer)
    process.start()
    try:
        reads = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and reads < 150:
            try:
                features, _ = read_entry(path, "k")
            except CorruptEntryError as error:  # pragma: no cover - the failure this test exists for
                raise AssertionError(f"read a partial entry: {error}") from error
            value = float(features["tokens"][0, 0, 0])
            assert torch.equal(features["tokens"], torch.full((1, 512, 1024), value))
            reads += 1
    finally:
        stop.set()
        process.join(timeout=30)
    assert reads > 10


def test_non_blocking_lock_reports_a_holder(tmp_path):
    lock = tmp_path / "x.lock"
    held = _CONTEXT.Event()
    release = _CONTEXT.Event()

    def holder() -> None:
        with file_lock(lock):
            held.set()
            release.wait(30)

    process = _CONTEXT.Process(target=holder)
    process.start()
    try:
        assert held.wait(30)
        with file_lock(lock, blocking=False) as acquired:
            assert acquired is False
    finally:
        release.set()
        process.join(timeout=30)
    with file_lock(lock, blocking=False) as acquired:
        assert acquired is True
