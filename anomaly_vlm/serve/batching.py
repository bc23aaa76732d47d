"""Dynamic batching: requests that arrive within ``batch_wait_ms`` are scored in one forward pass.

One :class:`Batcher` per detector queues whole requests. Its loop takes the oldest request, waits up to
``batch_wait_ms`` (from that request's arrival) for more, then hands whole requests -- never part of one
-- totalling at most ``max_batch`` images to the model worker, one thread shared by all detectors (the
model uses every core itself; two passes at once would only compete). A request whose deadline passed
while it waited is answered 503 and never scored; a queue over ``max_queue`` images refuses new requests
at once (503), so a burst cannot queue forever. Reading and decoding uploads happen before a request
joins the queue, so a slow client never occupies the model worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from torch import Tensor


class Overloaded(RuntimeError):
    """The request cannot be answered in time (queue full, or its deadline passed): HTTP 503."""


@dataclasses.dataclass
class _Job:
    images: Tensor
    future: asyncio.Future
    arrived: float
    deadline: float


class Batcher:
    """The queue and batching loop of one detector.

    Args:
        name: the detector's name (metrics).
        score: scores a list of requests' images in one call, returning one result per request (run on
            ``executor``).
        executor: the model worker.
        max_batch: most images per call (a larger single request still goes alone).
        wait_s: how long a batch's first request waits for others.
        max_queue: most queued images.
        batching: False scores each request alone (no waiting).
        on_batch: called with (images, requests) of each call (metrics).
        on_queue: called with the number of queued images whenever it changes (metrics).
    """

    def __init__(
        self,
        name: str,
        score: Callable[[Sequence[Tensor]], list[Any]],
        executor: Executor,
        max_batch: int,
        wait_s: float,
        max_queue: int,
        batching: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.score = score
        self.executor = executor
        self.max_batch = max_batch
        self.wait_s = wait_s if batching else 0.0
        self.max_queue = max_queue
        self.batching = batching
        self.on_batch = on_batch or (lambda images, requests: None)
        self.on_queue = on_queue or (lambda images: None)
        self.queue: collections.deque[_Job] = collections.deque()
        self.queued_images = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        self.queue.clear()

    async def submit(self, images: Tensor, deadline: float) -> Any:
        """Queue one request's images; its result once scored.

        Args:
            images: ``[n, 3, S, S]``.
            deadline: event-loop time by which it must be answered.

        Raises:
            Overloaded: the queue is full, or the deadline passed before the result came.
        """
        loop = asyncio.get_running_loop()
        if self.queued_images and self.queued_images + len(images) > self.max_queue:
            raise Overloaded(
                f"detector {self.name}: {self.queued_images} images are waiting "
                f"(max_queue={self.max_queue}); retry later"
            )
        job = _Job(images, loop.create_future(), loop.time(), deadline)
        self.queue.append(job)
        self._queued(len(images))
        self.wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(deadline - loop.time(), 0))
        except TimeoutError:
            raise Overloaded(
                f"detector {self.name}: not answered within the request deadline (request_timeout_s)"
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if job.future.cancelled() and task is not None and not task.cancelling():
                # The loop dropped it at its deadline a moment before this waiter's own timeout fired.
                raise Overloaded(
                    f"detector {self.name}: not answered within the request deadline (request_timeout_s)"
                ) from None
            raise

    def _queued(self, change: int) -> None:
        self.queued_images += change
        self.on_queue(self.queued_images)

    def _take(self, now: float) -> list[_Job]:
        """Whole requests for one call: the oldest first, then others while they fit in ``max_batch``."""
        taken: list[_Job] = []
        images = 0
        while self.queue:
            job = self.queue[0]
            if job.future.done() or now >= job.deadline:
                # Too late to be worth scoring: its waiter has given up (503) at the same deadline; a
                # cancelled future, unlike one holding an exception, is not reported as never retrieved.
                self.queue.popleft()
                self._queued(-len(job.images))
                job.future.cancel()
                continue
            if taken and (not self.batching or images + len(job.images) > self.max_batch):
                break
            self.queue.popleft()
            self._queued(-len(job.images))
            taken.append(job)
            images += len(job.images)
            if not self.batching:
                break
        return taken

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            remaining = self.queue[0].arrived + self.wait_s - loop.time()
            if remaining > 0 and self.queued_images < self.max_batch:
                # Give requests arriving within the window a chance to join this pass.
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=remaining)
                window_open = self.queue and self.queue[0].arrived + self.wait_s - loop.time() > 0
                if window_open and self.queued_images < self.max_batch:
                    continue
            jobs = self._take(loop.time())
            if not jobs:
                continue
            self.on_batch(sum(len(job.images) for job in jobs), len(jobs))
            try:
                results = await loop.run_in_executor(self.executor, self.score, [job.images for job in jobs])
            except Exception as error:  # a failed pass fails its requests, never the loop
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
