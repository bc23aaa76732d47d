"""The load benchmark's client (bench/perf/serve.py) counts what comes back: requests, errors, latency."""

from __future__ import annotations

import asyncio
from pathlib import Path

from anomaly_vlm.serve import ServeSettings, create_app
from bench.perf.serve import load, png

from .test_server import Server, SlowDetector


def test_the_load_client_measures_answers_and_counts_errors():
    detector = SlowDetector(0.025)  # 25 ms per pass
    settings = ServeSettings(detectors={"slow": Path("slow")}, warmup=False, batching=False)
    with Server(create_app(settings, {"slow": detector})) as url:
        good = asyncio.run(load(url, "/v1/detectors/slow/predict", 2, 0.05, 0.4, [png(64, 0)]))
        # One worker, 25 ms a pass, passes not batched: at most ~40 answers a second, whatever the clients
        # (two clients, each alone, would give ~80); over 0.4 s, about 16 passes, as many as 50 ms passes
        # over 0.8 s gave.
        assert 5 <= good["requests_per_s"] <= 44
        assert good["errors"] == 0 and good["p50_ms"] >= 25 and good["p99_ms"] >= good["p50_ms"]
        bad = asyncio.run(load(url, "/v1/detectors/nope/predict", 2, 0.05, 0.15, [png(64, 0)]))
        assert bad["errors"] == bad["requests"] > 0 and bad["error_statuses"] == {"404": bad["requests"]}
