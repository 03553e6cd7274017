"""Adaptive batching: requests that arrive together share one predict call.

scikit-learn spends hundreds of microseconds validating its input on every call, whatever the number
of rows, so one call on 32 rows costs about as much as one call on a single row. The batcher runs on
the worker's event loop and calls the model on that thread: while a call runs, new requests queue up
in the socket buffers, and the next flush takes all of them at once.

When to flush: a lone request (the last flush held one request) is run at the next loop turn, so
concurrency 1 pays no wait. Under concurrency, the batcher waits until as many requests as in the
last flush have arrived, or at most `max_wait` seconds after the first one, whichever is first. No
predict call holds more than `max_batch_size` rows; a larger single request runs alone, in a thread.
Jobs whose client has gone are dropped unrun, when a batch is formed or when their thread starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from modelserver.core.errors import BadRequestError, InternalError, RequestError, UnavailableError

log = logging.getLogger("modelserver.batching")  # the name its log lines have always carried


class Job(Protocol):
    """One request's rows and where its part of the result goes."""

    x: np.ndarray
    method: str

    @property
    def gone(self) -> bool:
        """Nobody waits for the result any more."""

    def drop(self) -> None:
        """Ends the job without a result (its client has gone)."""

    def done(self, result: np.ndarray) -> None:
        """Receives this job's rows of the output."""

    def fail(self, error: RequestError) -> None:
        """Receives the reason this job has no result."""


# Runs `method` on a 2-D array and returns one output row per input row.
Runner = Callable[[str, np.ndarray], np.ndarray]


class Batcher:
    """Queues jobs and flushes them in batches on the event loop (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runner: Runner,
        *,
        max_batch_size: int,
        max_wait_seconds: float,
        max_queue_depth: int,
        observe_batch: Callable[[int, float], None] = lambda rows, seconds: None,
        observe_queue: Callable[[int], None] = lambda depth: None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self._loop = loop
        self._runner = runner
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait_seconds
        self._max_queue_depth = max_queue_depth
        self._observe_batch = observe_batch
        self._observe_queue = observe_queue
        self._executor = executor
        self._queue: list[Job] = []
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._waiting = False  # the scheduled flush is the bounded wait, not the next loop turn
        self._target = 1  # requests in the last flush: how many to expect under steady load

    @property
    def depth(self) -> int:
        """Requests waiting for a predict call."""
        return len(self._queue)

    def submit(self, job: Job) -> None:
        """Queues a job; UnavailableError when the queue is full (the client should retry)."""
        queue = self._queue
        if len(queue) >= self._max_queue_depth:
            raise UnavailableError(
                f"server overloaded: {len(queue)} requests already waiting; retry later"
            )
        queue.append(job)
        if self._handle is None:
            if self._max_wait > 0 and len(queue) < self._target:
                self._waiting = True
                self._handle = self._loop.call_later(self._max_wait, self.flush)
            else:
                self._handle = self._loop.call_soon(self.flush)
        elif self._waiting and len(queue) >= self._target:
            self._handle.cancel()
            self._waiting = False
            self._handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Runs every queued job, in batches of at most `max_batch_size` rows."""
        self._handle = None
        self._waiting = False
        queue = self._queue
        if not queue:
            return
        self._queue = []
        self._observe_queue(len(queue))
        if any(job.gone for job in queue):
            for job in queue:
                if job.gone:
                    job.drop()
            queue = [job for job in queue if not job.gone]
            if not queue:
                return
        self._target = min(len(queue), self._max_queue_depth)
        method = queue[0].method
        if any(job.method != method for job in queue):
            by_method: dict[str, list[Job]] = {}
            for job in queue:
                by_method.setdefault(job.method, []).append(job)
            for method, jobs in by_method.items():
                self._run_all(method, jobs)
        else:
            self._run_all(method, queue)
        self._observe_queue(len(self._queue))

    def _run_all(self, method: str, jobs: list[Job]) -> None:
        """Runs jobs of one method in calls of at most `max_batch_size` rows."""
        start = 0
        while start < len(jobs):
            stop = start + 1
            rows = len(jobs[start].x)
            while stop < len(jobs) and rows + len(jobs[stop].x) <= self._max_batch_size:
                rows += len(jobs[stop].x)
                stop += 1
            self._run(method, jobs[start:stop], rows)
            start = stop

    def _run(self, method: str, jobs: list[Job], rows: int) -> None:
        started = time.perf_counter()
        if len(jobs) == 1 and rows > self._max_batch_size:
            self._run_in_thread(method, jobs[0], started)
            return
        if len(jobs) == 1:
            job = jobs[0]
            try:
                result = self._runner(method, job.x)
            except Exception as error:
                job.fail(_input_error(error))
                return
            self._observe_batch(rows, time.perf_counter() - started)
            _deliver(job, result)
            return
        try:
            result = self._runner(method, np.concatenate([job.x for job in jobs]))
        except Exception:
            # One bad request must not fail its neighbours: run each alone to find it.
            for job in jobs:
                self._run(method, [job], len(job.x))
            return
        self._observe_batch(rows, time.perf_counter() - started)
        offset = 0
        for job in jobs:
            end = offset + len(job.x)
            _deliver(job, result[offset:end])
            offset = end

    def _run_in_thread(self, method: str, job: Job, started: float) -> None:
        """A request larger than a batch may take long: it runs in a thread, so that the loop
        keeps answering health probes and smaller requests meanwhile."""

        def work() -> np.ndarray | None:
            # Threads take jobs in turn: by now the client may have gone.
            return None if job.gone else self._runner(method, job.x)

        def finished(future: asyncio.Future[np.ndarray | None]) -> None:
            if future.cancelled():
                job.fail(UnavailableError("the server is shutting down"))
                return
            error = future.exception()
            if error is not None:
                job.fail(_input_error(error if isinstance(error, Exception) else Exception(error)))
                return
            result = future.result()
            if result is None:
                job.drop()
                return
            self._observe_batch(len(job.x), time.perf_counter() - started)
            _deliver(job, result)

        future = self._loop.run_in_executor(self._executor, work)
        future.add_done_callback(finished)


def _deliver(job: Job, result: np.ndarray) -> None:
    """Hands a job its rows; a failure to encode them still answers the client (500)."""
    try:
        job.done(result)
    except Exception as error:
        log.exception("delivering a prediction failed")
        job.fail(InternalError(f"could not encode the prediction: {type(error).__name__}"))


def _input_error(error: Exception) -> RequestError:
    """The model's complaint about the input (a ValueError from validation) is the client's 400."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, ValueError | TypeError):
        return BadRequestError(f"the model rejected the input: {error}")
    log.error("predict failed: %s: %s", type(error).__name__, error)
    return InternalError(f"prediction failed: {type(error).__name__}: {error}")
