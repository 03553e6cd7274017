"""Delayed re-checks of resources that are not settled yet (controller-runtime's RequeueAfter).

Pods that crash-loop or cannot pull their image change no Deployment field until the progress
deadline, so no child event would tell the operator. Only resources still progressing get a
re-check, with a growing delay; a settled resource has no timer at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Requeue:
    """At most one pending re-check per key, with exponential backoff."""

    def __init__(self, first: float = 5.0, longest: float = 60.0):
        self._first = first
        self._longest = longest
        self._timers: dict[str, threading.Timer] = {}
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()

    def schedule(self, key: str, action: Callable[[], None]) -> float:
        """Run ``action`` later unless a re-check of ``key`` is already pending; the delay used."""
        with self._lock:
            if key in self._timers:
                return 0.0
            delay = self._delays.get(key, self._first / 2) * 2
            delay = min(delay, self._longest)
            self._delays[key] = delay
            timer = threading.Timer(delay, self._fire, args=(key, action))
            timer.daemon = True
            self._timers[key] = timer
            timer.start()
            return delay

    def _fire(self, key: str, action: Callable[[], None]) -> None:
        with self._lock:
            self._timers.pop(key, None)
        action()

    def settle(self, key: str) -> None:
        """The resource is settled: drop its timer and reset its backoff."""
        with self._lock:
            timer = self._timers.pop(key, None)
            self._delays.pop(key, None)
        if timer is not None:
            timer.cancel()

    def stop(self) -> None:
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    def pending(self) -> int:
        with self._lock:
            return len(self._timers)
