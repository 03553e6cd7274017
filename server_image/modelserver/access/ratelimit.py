"""The pod's request rate limit: one token bucket shared by every worker process.

A limit per worker (the rate divided by the workers) would give a keep-alive client, whose
connection the kernel hands to one worker, a fraction of the pod's rate. So the bucket lives in
anonymous shared memory created before the workers are forked, as one number: the generic cell
rate algorithm's "theoretical arrival time" (when the bucket will be full again). A request moves it
forward by one interval unless that would put it more than `burst` intervals ahead of now. A lock
shared across the processes (a futex, uncontended in the common case) makes the update atomic;
CLOCK_MONOTONIC is the same clock in every process.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import multiprocessing
import time


class RateLimiter:
    """`rate` requests per second on average, up to `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = burst * self._interval
        self._memory = mmap.mmap(-1, ctypes.sizeof(ctypes.c_double))
        self._arrival = ctypes.c_double.from_buffer(self._memory)
        self._arrival.value = 0.0
        self._lock = multiprocessing.get_context("fork").Lock()

    def take(self) -> float:
        """Takes one token: 0.0 when the request may go on, else the seconds until one is free."""
        now = time.monotonic()
        with self._lock:
            arrival = self._arrival.value
            later = (arrival if arrival > now else now) + self._interval
            ahead = later - now - self._tolerance
            if ahead > 0:
                return ahead
            self._arrival.value = later
        return 0.0


def retry_after_seconds(wait: float) -> int:
    """The Retry-After value (whole seconds, at least 1) for a wait in seconds."""
    return max(1, math.ceil(wait))
