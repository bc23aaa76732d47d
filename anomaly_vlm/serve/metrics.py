"""Prometheus text exposition (format 0.0.4) of the service's counters, written without a client library.

Every update happens on the event loop's thread, so plain dicts suffice. Labels hold only detector names
the service serves (an unknown name in a URL is counted as ``-``) and status codes, so a client cannot
grow the label sets.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

#: Request latency buckets (seconds): a tiny CLIP on CPU answers in milliseconds, a ViT-L in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Images per forward pass, and requests per forward pass.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[tuple, float] = defaultdict(float)

    def observe(self, labels: tuple, value: float) -> None:
        self.counts[labels][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def lines(self, name: str, label_names: tuple[str, ...]) -> list[str]:
        out = []
        for labels, counts in sorted(self.counts.items()):
            base = _labels(label_names, labels)
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'{name}_bucket{{{base}{"," if base else ""}le="{le}"}} {running}')
            out.append(f"{name}_sum{{{base}}} {self.sums[labels]:.6f}")
            out.append(f"{name}_count{{{base}}} {running}")
        return out


def _labels(names: tuple[str, ...], values: tuple) -> str:
    return ",".join(f'{name}="{value}"' for name, value in zip(names, values, strict=True))


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.requests: dict[tuple, int] = defaultdict(int)
        self.images: dict[tuple, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_images = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.queued: dict[str, int] = {}
        self.ready = False

    def request(self, detector: str, status: int, seconds: float, images: int = 0) -> None:
        self.requests[(detector, str(status))] += 1
        self.latency.observe((detector,), seconds)
        if images:
            self.images[(detector,)] += images

    def batch(self, detector: str, images: int, requests: int) -> None:
        self.batch_images.observe((detector,), images)
        self.batch_requests.observe((detector,), requests)

    def render(self) -> str:
        lines = [
            "# HELP anomaly_vlm_requests_total Prediction requests by detector and HTTP status.",
            "# TYPE anomaly_vlm_requests_total counter",
        ]
        lines += [
            f'anomaly_vlm_requests_total{{detector="{d}",status="{s}"}} {n}'
            for (d, s), n in sorted(self.requests.items())
        ]
        lines += [
            "# HELP anomaly_vlm_errors_total Prediction requests answered with an error status (4xx, 5xx).",
            "# TYPE anomaly_vlm_errors_total counter",
        ]
        lines += [
            f'anomaly_vlm_errors_total{{detector="{d}",status="{s}"}} {n}'
            for (d, s), n in sorted(self.requests.items())
            if int(s) >= 400
        ]
        lines += [
            "# HELP anomaly_vlm_images_total Images scored.",
            "# TYPE anomaly_vlm_images_total counter",
        ]
        lines += [
            f'anomaly_vlm_images_total{{detector="{d}"}} {n}' for (d,), n in sorted(self.images.items())
        ]
        lines += [
            "# HELP anomaly_vlm_request_seconds Prediction request latency (body read to response).",
            "# TYPE anomaly_vlm_request_seconds histogram",
            *self.latency.lines("anomaly_vlm_request_seconds", ("detector",)),
            "# HELP anomaly_vlm_batch_images Images per forward pass.",
            "# TYPE anomaly_vlm_batch_images histogram",
            *self.batch_images.lines("anomaly_vlm_batch_images", ("detector",)),
            "# HELP anomaly_vlm_batch_requests Requests per forward pass.",
            "# TYPE anomaly_vlm_batch_requests histogram",
            *self.batch_requests.lines("anomaly_vlm_batch_requests", ("detector",)),
            "# HELP anomaly_vlm_queued_images Images waiting to be scored.",
            "# TYPE anomaly_vlm_queued_images gauge",
        ]
        lines += [f'anomaly_vlm_queued_images{{detector="{d}"}} {n}' for d, n in sorted(self.queued.items())]
        lines += [
            "# HELP anomaly_vlm_ready Whether the warm-up pass has finished.",
            "# TYPE anomaly_vlm_ready gauge",
            f"anomaly_vlm_ready {int(self.ready)}",
        ]
        return "\n".join(lines) + "\n"
