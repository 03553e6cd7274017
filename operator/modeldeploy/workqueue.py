"""A rate-limited work queue on asyncio, as controller-runtime's: watch events only add keys.

A key is in at most one place at a time: waiting for its delay, queued, or being processed.
Adding a queued key does nothing; adding a key while it is processed marks it dirty, and it
is processed once more afterwards, so no change is lost and one object never runs twice at
once. A failed pass comes back after an exponential, jittered, capped delay; a pass may ask to
be looked at again later (``Result.requeue_after``). Nothing here knows Kubernetes or kopf.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from modeldeploy import metrics

log = logging.getLogger("modeldeploy.workqueue")

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Result:
    """What a pass asks for next: nothing, a look later, or a retry with backoff."""

    requeue_after: float | None = None
    failed: bool = False
    # A floor for the retry delay (the API server's Retry-After, a permanent refusal).
    retry_at_least: float = 0.0


@dataclass(frozen=True)
class Backoff:
    """Delay of the n-th consecutive failure: first * 2**(n-1), capped, jittered by +-jitter."""

    first: float = 1.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        base = min(self.cap, self.first * 2.0 ** max(0, failures - 1))
        spread: float = (rng or random).uniform(-self.jitter, self.jitter)
        return min(self.cap, base * (1 + spread))


def jittered(seconds: float, jitter: float = 0.1) -> float:
    """``seconds`` spread by +-``jitter`` so that periodic work does not synchronise."""
    return seconds * (1 + random.uniform(-jitter, jitter))  # noqa: S311 - not cryptographic


class WorkQueue(Generic[K]):
    """Keys in, ``process(key)`` out, from a fixed number of worker tasks."""

    def __init__(
        self,
        process: Callable[[K], Awaitable[Result]],
        *,
        workers: int = 4,
        backoff: Backoff | None = None,
    ) -> None:
        self._process = process
        self._workers = workers
        self._backoff = backoff or Backoff()
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- adding -------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Process ``key`` as soon as a worker is free (a pending delay is cut short)."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting[1].cancel()
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            metrics.QUEUE_DEPTH.set(len(self._queued))

    def add_after(self, key: K, delay: float) -> None:
        """Process ``key`` in ``delay`` seconds, unless it is due earlier anyway."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._queued or key in self._dirty:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        waiting = self._waiting.get(key)
        if waiting is not None:
            if waiting[0] <= due:
                return
            waiting[1].cancel()
        self._waiting[key] = (due, loop.call_at(due, self._wake, key))

    def _wake(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        """The object is gone: drop its delay and backoff (a queued pass finds it gone)."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting[1].cancel()
        self._dirty.discard(key)
        self._failures.pop(key, None)

    # --- introspection --------------------------------------------------------------------

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def delay_of(self, key: K) -> float | None:
        """Seconds until ``key`` is due, or None when it is not waiting."""
        waiting = self._waiting.get(key)
        return None if waiting is None else waiting[0] - asyncio.get_running_loop().time()

    def __len__(self) -> int:
        """Keys known to the queue in any state (waiting, queued, processing)."""
        return len(self._waiting.keys() | self._queued | self._processing)

    # --- running --------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            metrics.QUEUE_DEPTH.set(len(self._queued))
            self._processing.add(key)
            try:
                result = await self._process(key)
            except Exception:
                log.exception("processing %s failed", key)
                result = Result(failed=True)
            finally:
                self._processing.discard(key)
            self._after(key, result)

    def _after(self, key: K, result: Result) -> None:
        if result.failed:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            metrics.RETRIES.inc()
            delay = max(self._backoff.delay(failures), result.retry_at_least)
        else:
            self._failures.pop(key, None)
            delay = result.requeue_after if result.requeue_after is not None else -1.0
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)
        elif delay >= 0:
            self.add_after(key, delay)
