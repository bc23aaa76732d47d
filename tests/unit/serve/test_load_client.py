"""The load benchmark's client (bench/perf/serve.py) counts what comes back: requests, errors, latency."""

from __future__ import annotations

import asyncio
from pathlib import Path

from anomaly_vlm.serve import ServeSettings, create_app
from bench.perf.serve import load, png

from .test_server import Server, SlowDetector


def test_the_load_client_measures_answers_and_counts_errors():
    detector = SlowDetector(0.05)  # 50 ms per pass
    settings = ServeSettings(detectors={"slow": Path("slow")}, warmup=False, batching=False)
    with Server(create_app(settings, {"slow": detector})) as url:
        good = asyncio.run(load(url, "/v1/detectors/slow/predict", 2, 0.1, 0.8, [png(64, 0)]))
        # One worker, 50 ms a pass, passes not batched: at most ~20 answers a second, whatever the clients
        # (measured over 0.8 s: about 16 a second, far from both bounds).
        assert 5 <= good["requests_per_s"] <= 22
        assert good["errors"] == 0 and good["p50_ms"] >= 50 and good["p99_ms"] >= good["p50_ms"]
        bad = asyncio.run(load(url, "/v1/detectors/nope/predict", 2, 0.05, 0.25, [png(64, 0)]))
        assert bad["errors"] == bad["requests"] > 0 and bad["error_statuses"] == {"404": bad["requests"]}
