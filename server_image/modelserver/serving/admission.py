"""Admission of work by what it costs in memory: request-body bytes and rows in flight per worker.

Counting requests would not bound memory: one 8 MiB request holds as much as thousands of small
ones. So a worker admits a request only while the bytes of the bodies it holds, and the rows it has
decoded and not yet answered, stay under their caps; beyond them the client gets 503 with
Retry-After at once, before its body is read into memory. A request is always admitted when the
worker holds nothing else, so that a cap below the body-size limit refuses nothing forever.
"""

from __future__ import annotations

from modelserver.core.errors import UnavailableError


class Budget:
    """One quantity in flight (bytes or rows) and its cap."""

    def __init__(self, unit: str, limit: int) -> None:
        self.unit = unit
        self.limit = limit
        self.used = 0

    def take(self, amount: int) -> None:
        """Counts `amount` in, or raises UnavailableError when it does not fit."""
        if self.used and self.used + amount > self.limit:
            raise UnavailableError(
                f"server busy: {self.used} {self.unit} in flight, {amount} more would exceed "
                f"{self.limit}; retry later"
            )
        self.used += amount

    def give(self, amount: int) -> None:
        self.used -= amount


class Admission:
    """Request-body bytes and decoded rows in flight in one worker (all on its event loop)."""

    def __init__(self, max_bytes: int, max_rows: int) -> None:
        self.bytes = Budget("bytes of requests", max_bytes)
        self.rows = Budget("rows", max_rows)
