"""Efficiency figures measured during the test loop: latency, throughput, memory, parameters."""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import lightning as L
import torch


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class EfficiencyProbe(L.Callback):
    """Times every test batch; reports median ms/image after warm-up and images/s.

    A job whose test set fits in the warm-up batches is timed on those instead (flagged with
    ``timing_includes_warmup``), so small jobs still get a latency figure rather than none.

    Args:
        warmup_batches: test batches of the job excluded from timing (first-call allocations, lazy
            init); counted over the whole job, not per category, so small categories still get timed.
    """

    def __init__(self, warmup_batches: int = 1) -> None:
        self.warmup_batches = warmup_batches
        self.per_image_ms: list[float] = []
        self.timed_images = 0
        self.timed_seconds = 0.0
        self._start = 0.0
        self._batches_seen = 0
        self._warmup_ms: list[float] = []
        self._warmup_images = 0
        self._warmup_seconds = 0.0

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        _synchronize()
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        _synchronize()
        elapsed = time.perf_counter() - self._start
        self._batches_seen += 1
        count = len(batch)
        if self._batches_seen <= self.warmup_batches:
            self._warmup_ms.append(1000.0 * elapsed / count)
            self._warmup_images += count
            self._warmup_seconds += elapsed
            return
        self.per_image_ms.append(1000.0 * elapsed / count)
        self.timed_images += count
        self.timed_seconds += elapsed

    def summary(self, pl_module: L.LightningModule | None = None) -> dict:
        """Figures for results.json (None where nothing was timed)."""
        includes_warmup = not self.per_image_ms and bool(self._warmup_ms)
        per_image_ms = self._warmup_ms if includes_warmup else self.per_image_ms
        images = self._warmup_images if includes_warmup else self.timed_images
        seconds = self._warmup_seconds if includes_warmup else self.timed_seconds
        figures: dict = {
            "ms_per_image": statistics.median(per_image_ms) if per_image_ms else None,
            "images_per_s": images / seconds if seconds else None,
            "timed_images": images,
            # True when every batch was a warm-up batch: the figure then includes first-call costs.
            "timing_includes_warmup": includes_warmup,
            # ru_maxrss is in KiB on Linux.
            "peak_cpu_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20
            if torch.cuda.is_available()
            else None,
        }
        if pl_module is not None and hasattr(pl_module, "parameter_counts"):
            counts = pl_module.parameter_counts()
            figures["total_parameters"] = counts["total"]
            figures["trainable_parameters"] = counts["trainable"]
        return figures


def flops_per_image(method: L.LightningModule, image_size: int, feature_cache: Any = None) -> int | None:
    """FLOPs of scoring one image: ``frozen_features`` of one ``[1, 3, S, S]`` input, then scoring them.

    Counted with torch's FLOP counter after the method was set up for a category, so few-shot memory
    comparisons and text-classifier products are included; text encoding done once per category is
    not. A multiply-add counts as two FLOPs (torch's convention). None if the method cannot be run.

    The two halves are counted apart, which gives the count of ``predict_images``: the frozen half runs
    once per feature-cache namespace (its count and feature shapes are kept by ``feature_cache.memo``,
    so a job whose features are all cached runs no encoder pass), the scoring half runs every time, on
    random features of those shapes (FLOPs depend on shapes, not values).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = method.device
    model = method.model

    def frozen_half() -> dict:
        images = torch.rand(1, 3, int(image_size), int(image_size), device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            features = model.frozen_features(images)
        shapes = {
            name: [list(value.shape), str(value.dtype).removeprefix("torch.")]
            for name, value in features.items()
        }
        return {"flops": int(counter.get_total_flops()), "shapes": shapes}

    try:
        if feature_cache is not None and feature_cache.enabled and getattr(model, "cacheable", False):
            material = {"namespace": feature_cache.namespace(model), "image_size": int(image_size)}
            frozen = feature_cache.memo("frozen_flops_per_image", material, frozen_half)
        else:
            frozen = frozen_half()
        generator = torch.Generator().manual_seed(0)
        features = {
            name: torch.rand(shape, generator=generator).to(device=device, dtype=getattr(torch, dtype))
            for name, (shape, dtype) in frozen["shapes"].items()
        }
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            method.score_set(features) if method.transductive else method.score(features)
    except (RuntimeError, NotImplementedError):
        return None
    return int(frozen["flops"]) + int(counter.get_total_flops())
