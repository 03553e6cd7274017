"""Readiness shared by all worker processes of one server.

A probe reaches one worker at random (or the supervisor's own health listener), so each answers for
the whole server: ready when at least one worker serves the model, no worker that listens is still
loading (at start-up they all listen while loading, and would refuse requests), and the server is
not shutting down. A worker restarting after a crash listens only once loaded, so it does not take
the pod out of the Service while the others serve. The flags live in anonymous shared memory
created before the workers are forked, one byte per worker plus one for draining.
"""

from __future__ import annotations

import mmap

# A worker's byte: 0 starting (not listening), then listening while loading, then loaded.
_LISTENING = b"\x01"
_LOADED = b"\x02"


class Readiness:
    """Per-worker "model loaded" flags and the server-wide "draining" flag."""

    def __init__(self, workers: int) -> None:
        self._flags = mmap.mmap(-1, workers + 1)
        self._workers = workers

    @property
    def ready(self) -> bool:
        """A worker serves, none listens unloaded, no shutdown begun."""
        flags = self._flags
        states = flags[1 : self._workers + 1]
        return flags[0] == 0 and _LOADED in states and _LISTENING not in states

    @property
    def draining(self) -> bool:
        """Shutdown has begun."""
        return self._flags[0] == 1

    def mark_listening(self, worker: int) -> None:
        """Worker `worker` accepts connections while its model loads."""
        self._flags[worker + 1] = _LISTENING[0]

    def mark_loaded(self, worker: int) -> None:
        """Worker `worker` serves the model."""
        self._flags[worker + 1] = _LOADED[0]

    def mark_unloaded(self, worker: int) -> None:
        """Worker `worker` is (re)starting."""
        self._flags[worker + 1] = 0

    def start_draining(self) -> None:
        """Readiness turns 503 on every worker at once."""
        self._flags[0] = 1
