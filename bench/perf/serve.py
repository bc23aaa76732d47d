"""Load test of the inspection service: throughput and latency against concurrency, batching on and off.

For each backbone case (random weights, ``pretrained=null``: the tiny CLIP and ViT-B-16-plus-240) a
zero-shot CLIP-baseline detector with thresholds is saved, and the service is started as its own
process (``python -m anomaly_vlm.serve``), once with dynamic batching and once without. A closed-loop
asyncio client (httpx, one connection per client) then runs N concurrent clients, each sending one PNG
per request (``?maps=true&masks=true``, as the page asks) as soon as its previous answer came, for
``--duration`` seconds after ``--warmup`` seconds that are not counted; N in ``--clients``.
Reported per (case, batching, N): requests/s, images/s, p50/p95/p99 latency, errors, the mean
images per forward pass (from ``/metrics``), and the server's peak RSS (``VmHWM``).

Soundness of the client: the same client is first run against ``/healthz`` (no model) at the largest N;
that rate is the client's own ceiling on this machine and is reported beside the figures -- a service
rate well below it is the service's, not the client's. The client and the server share the machine's
cores; the client's CPU seconds per request are reported too.

Soak: ``--soak`` seconds at ``--soak-clients`` with batching on; the server's RSS is sampled every second
and the mean of the last minute is compared with the mean of the first minute after warm-up (flat:
within 5 %); any error fails the run (exit status 1).

Usage (``make bench-serve BENCH_SERVE_ARGS=...``):
    python -m bench.perf serve [--cases tiny,b16plus] [--clients 1,4,16,64] [--duration 30] [--warmup 5]
        [--soak 300] [--soak-clients 16] [--max-batch 16] [--batch-wait-ms 2] [--quick] [--json FILE]

``--quick``: tiny only, clients 1 and 4, 3 s each, a 20 s soak (a check that it runs, not figures).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import REPO_ROOT
from bench.report import BenchReport

#: case -> (backbone config, extra overrides)
CASES = {
    "tiny": ("tiny", ()),
    "b16plus": ("vit_b16_plus_240", ("backbone.pretrained=null",)),
}


def make_detector(root: Path, backbone: str, extra) -> Path:
    """A zero-shot CLIP-baseline detector (random weights) with thresholds, so decisions and masks run."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import anomaly_vlm.config  # noqa: F401  (registers the typed schema that conf/train.yaml composes)
    from anomaly_vlm.decisions.thresholds import CategoryThresholds
    from anomaly_vlm.deploy.detector import save_detector
    from anomaly_vlm.tasks.instantiate import build

    overrides = [f"backbone={backbone}", *extra, "method=clip", "shots=0", f"paths.output_dir={root}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.cache_dir={root / 'cache'}"])
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=0, text_cache_dir=None
    )
    method.eval().setup_category("widget", None)
    size = method.backbone.image_size
    with torch.no_grad():
        scored = method.predict_images(
            torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        )
    thresholds = CategoryThresholds(
        image=float(scored.image_score.median()),
        pixel=float(scored.anomaly_map.flatten().quantile(0.95)),
        method="fixed",
        source="given",
    )
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return save_detector(root / backbone / "widget", method, "widget", config, thresholds, "clip", scored)


def png(side: int, seed: int) -> bytes:
    """A random RGB PNG of ``side`` x ``side`` (a camera image squashed to the model by the service)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Smooth content (a random low-resolution image upscaled) compresses like a photo, not like noise.
    small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python -m anomaly_vlm.serve`` in its own process, waited for until ``/readyz``."""

    def __init__(self, detector: Path, batching: bool, max_batch: int, wait_ms: float, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "anomaly_vlm.serve",
            f"detector={detector}",
            f"port={self.port}",
            f"batching={str(batching).lower()}",
            f"max_batch={max_batch}",
            f"batch_wait_ms={wait_ms}",
            "max_queue=4096",
            "request_timeout_s=120",
            "log_level=warning",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )

    def wait_ready(self, timeout: float = 600.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"error: the server exited ({self.process.returncode}); see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"error: the server was not ready within {timeout:.0f} s; see {self.log.name}")

    def memory_kb(self, field: str) -> int:
        """``VmRSS`` (now) or ``VmHWM`` (peak) of the server, in kB."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def load(
    url: str, path: str, clients: int, warmup: float, duration: float, images: list[bytes], sampler=None
) -> dict:
    """N closed-loop clients for ``warmup + duration`` seconds; figures of the ``duration`` part."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def one_client(index: int) -> None:
            count = 0
            while loop.time() < stop_at:
                data = images[(index + count) % len(images)]
                count += 1
                sent = loop.time()
                try:
                    if path == "/healthz":
                        response = await client.get(path)
                    else:
                        response = await client.post(
                            path, files=[("files", (f"{index}.png", data, "image/png"))]
                        )
                    status = response.status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                done = loop.time()
                if sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
                    if status != 200:
                        errors[str(status)] = errors.get(str(status), 0) + 1

        async def sample() -> None:
            while loop.time() < stop_at:
                if loop.time() >= measure_from:
                    sampler()
                await asyncio.sleep(1.0)

        tasks = [one_client(index) for index in range(clients)]
        if sampler is not None:
            tasks.append(sample())
        await asyncio.gather(*tasks)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    count = len(latencies)
    quantiles = np.quantile(latencies, [0.5, 0.95, 0.99]) * 1e3 if count else [float("nan")] * 3
    return {
        "clients": clients,
        "requests": count,
        "requests_per_s": count / duration,
        "p50_ms": float(quantiles[0]),
        "p95_ms": float(quantiles[1]),
        "p99_ms": float(quantiles[2]),
        "errors": sum(errors.values()),
        "error_statuses": errors,
        "client_cpu_ms_per_request": 1e3 * cpu / max(count, 1),
    }


def pass_totals(url: str) -> tuple[float, int]:
    """(images, forward passes) so far, from the service's ``/metrics``."""
    import httpx

    text = httpx.get(f"{url}/metrics").text
    total = re.search(r"^anomaly_vlm_batch_images_sum\{[^}]*\} ([\d.]+)", text, re.M)
    count = re.search(r"^anomaly_vlm_batch_images_count\{[^}]*\} (\d+)", text, re.M)
    return (float(total.group(1)) if total else 0.0), (int(count.group(1)) if count else 0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="tiny,b16plus", help=f"comma-separated of {sorted(CASES)}")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=5.0, help="uncounted seconds before each point")
    parser.add_argument("--soak", type=float, default=300.0, help="soak seconds (0: none)")
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16, help="the service's max_batch with batching on")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="the service's batch_wait_ms")
    parser.add_argument("--image-px", type=int, default=512, help="side of the uploaded PNGs")
    parser.add_argument("--quick", action="store_true", help="tiny, 1 and 4 clients, 3 s each, 20 s soak")
    parser.add_argument(
        "--work", default=None, help="folder for detectors and server logs (default: temporary)"
    )


def run(args: argparse.Namespace, report: BenchReport) -> int:
    if args.quick:
        args.cases, args.clients, args.duration, args.warmup, args.soak = "tiny", "1,4", 3.0, 1.0, 20.0
    clients = [int(value) for value in args.clients.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    images = [png(args.image_px, seed) for seed in range(8)]
    report.environment["cpus"] = os.cpu_count()
    rows = report.results.setdefault("points", [])
    soaks = report.results.setdefault("soak", [])
    status = 0
    lines = [
        "| backbone | batching | clients | req/s | p50 ms | p95 ms | p99 ms | images/pass | errors | "
        "peak RSS MiB |",
        "|" + "---|" * 10,
    ]
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"error: --cases {case} is not one of {sorted(CASES)}")
        backbone, extra = CASES[case]
        detector = make_detector(work / "detectors", backbone, extra)
        for batching in (True, False):
            log = work / f"{case}-{batching}.log"
            server = ServerProcess(detector, batching, args.max_batch, args.batch_wait_ms, log)
            try:
                server.wait_ready()
                if case == args.cases.split(",")[0] and batching:
                    ceiling = asyncio.run(load(server.url, "/healthz", max(clients), 1.0, 3.0, images))
                    report.results["client_ceiling_requests_per_s"] = ceiling["requests_per_s"]
                    print(
                        f"client ceiling (GET /healthz, {max(clients)} clients): "
                        f"{ceiling['requests_per_s']:.0f} req/s",
                        flush=True,
                    )
                path = "/v1/detectors/widget/predict?maps=true&masks=true"
                for count in clients:
                    before = pass_totals(server.url)
                    row = asyncio.run(load(server.url, path, count, args.warmup, args.duration, images))
                    after = pass_totals(server.url)
                    passes = after[1] - before[1]
                    row.update(
                        backbone=backbone,
                        batching=batching,
                        # Over warm-up and measured part alike.
                        images_per_pass=(after[0] - before[0]) / passes if passes else None,
                        peak_rss_mib=server.memory_kb("VmHWM") / 1024,
                    )
                    rows.append(row)
                    status |= int(row["errors"] > 0)
                    line = (
                        f"| {backbone} | {'on' if batching else 'off'} | {count} | "
                        f"{row['requests_per_s']:.1f} | "
                        f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} | "
                        f"{row['images_per_pass'] or 0:.1f} | {row['errors']} | {row['peak_rss_mib']:.0f} |"
                    )
                    print(line, flush=True)
                    lines.append(line)
                if batching and args.soak > 0:
                    samples: list[tuple[float, int]] = []

                    def sampler(samples=samples, server=server) -> None:
                        samples.append((time.monotonic(), server.memory_kb("VmRSS")))

                    soak = asyncio.run(
                        load(server.url, path, args.soak_clients, args.warmup, args.soak, images, sampler)
                    )
                    window = min(60.0, args.soak / 3)
                    first = [kb for t, kb in samples if t - samples[0][0] <= window]
                    last = [kb for t, kb in samples if samples[-1][0] - t <= window]
                    drift = statistics.mean(last) / statistics.mean(first) - 1
                    soak.update(
                        backbone=backbone,
                        seconds=args.soak,
                        rss_first_mib=statistics.mean(first) / 1024,
                        rss_last_mib=statistics.mean(last) / 1024,
                        rss_drift=drift,
                        flat=abs(drift) <= 0.05,
                        peak_rss_mib=server.memory_kb("VmHWM") / 1024,
                    )
                    soaks.append(soak)
                    status |= int(soak["errors"] > 0 or not soak["flat"])
                    print(
                        f"soak {backbone}: {args.soak:.0f} s at {args.soak_clients} clients, "
                        f"{soak['requests']} requests, {soak['errors']} errors, "
                        f"RSS {soak['rss_first_mib']:.0f} -> {soak['rss_last_mib']:.0f} MiB "
                        f"({100 * drift:+.1f} %, first vs last {window:.0f} s)",
                        flush=True,
                    )
            finally:
                server.stop()
    print(
        f"\n{args.duration:g} s per point after {args.warmup:g} s warm-up; PNG {args.image_px} px; "
        f"max_batch {args.max_batch}, batch_wait_ms {args.batch_wait_ms:g}\n"
    )
    print("\n".join(lines))
    return status
