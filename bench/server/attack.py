"""Hostile clients for the "under attack" scenario, on raw sockets, in a process of their own.

`python bench/server/attack.py --port P --path /v1/models/m:predict --body FILE --seconds S`
keeps a bounded mix of connections open against one server for S seconds (or until SIGTERM) and
then prints one line `ATTACK_RESULT {...}` with what each kind of connection saw:

- slow headers (slowloris): a request line, then one short header line a second,
  never the end of the head;
- non-readers: each sends a few large inference requests (the body in `--body`) back to back on
  one connection, with a small receive buffer, never reads an answer, and after `hold_s` seconds
  drops the connection for a new one (their openings are spread over that time);
- giant bodies: a request that declares a 1 GiB body and streams it at a bounded rate.

Everything is bounded so that the attack cannot take the machine down whatever the server does:
a fixed number of connections of each kind, a fixed number of requests per non-reader connection
and of such connections per second, a byte cap and a rate per giant body, and a pause before a
connection the server closed is opened again. One thread drives every socket (non-blocking,
`selectors`), so the attack itself costs little CPU. Once every connection has been opened (and
every non-reader has sent its requests once) it prints `ATTACK_READY`, so that the load can start
with the attack in place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_PREFIX = "ATTACK_RESULT "
READY_LINE = "ATTACK_READY"
KINDS = ("slow_headers", "non_readers", "giant_bodies")
GIANT_DECLARED = 1 << 30  # the Content-Length a giant body announces
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Mix:
    """How many connections of each kind, and how hard each one pushes."""

    slow_headers: int = 8
    trickle_s: float = 1.0  # one header line per connection this often
    non_readers: int = 4
    requests_per_non_reader: int = 4
    hold_s: float = 5.0  # a non-reader drops its connection for a new one after this long
    giant_bodies: int = 2
    giant_rate: int = 2 * 1024 * 1024  # bytes per second per connection
    giant_cap: int = 64 * 1024 * 1024  # bytes sent per connection, at most
    reconnect_s: float = 0.5  # pause before reopening a connection the server closed


@dataclass
class KindStats:
    opened: int = 0
    renewed: int = 0  # connections the attacker dropped for new ones (non-readers)
    closed_by_server: int = 0  # orderly close or reset seen by the attacker
    bytes_sent: int = 0
    requests_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # status line codes received

    def saw(self, first_bytes: bytes) -> None:
        parts = first_bytes.split(b" ", 2)
        code = parts[1].decode(errors="replace") if len(parts) > 1 else "?"
        self.statuses[code] = self.statuses.get(code, 0) + 1


@dataclass
class Slot:
    """One attacking connection (reopened after the server closes it)."""

    kind: str
    number: int
    sock: socket.socket | None = None
    reopen_at: float = 0.0
    opened_at: float = 0.0
    opens: int = 0  # connections this slot has opened
    next_send: float = 0.0
    pending: bytes = b""  # bytes still to send of the current piece
    sent_on_connection: int = 0
    requests_on_connection: int = 0
    answered: bool = False  # a status line was already counted on this connection


class Attack:
    def __init__(self, host: str, port: int, *, path: str, body: bytes, mix: Mix) -> None:
        self.address = (host, port)
        host_header = host
        self.path = path.encode()
        self.mix = mix
        self.request = (
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (self.path, host_header.encode(), len(body), body)
        )
        self.host_header = host_header.encode()
        self.stats = {kind: KindStats() for kind in KINDS}
        self.selector = selectors.DefaultSelector()
        self.slots = [
            Slot(kind, n)
            for kind, count in (
                ("slow_headers", mix.slow_headers),
                ("non_readers", mix.non_readers),
                ("giant_bodies", mix.giant_bodies),
            )
            for n in range(count)
        ]
        self.connect_errors = 0
        self.stopping = False  # SIGTERM: stop and report

    # -- connections ---------------------------------------------------------------------------

    def _open(self, slot: Slot, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slot.kind == "non_readers":
            # Set before connecting: the window the server may fill while nobody reads.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2.0)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            self.connect_errors += 1
            slot.reopen_at = now + self.mix.reconnect_s
            return
        sock.setblocking(False)
        slot.sock = sock
        slot.sent_on_connection = 0
        slot.requests_on_connection = 0
        slot.answered = False
        slot.next_send = now
        slot.opened_at = now
        slot.opens += 1
        stats = self.stats[slot.kind]
        stats.opened += 1
        if slot.kind == "slow_headers":
            slot.pending = b"POST %s HTTP/1.1\r\nhost: %s\r\n" % (self.path, self.host_header)
        elif slot.kind == "giant_bodies":
            slot.pending = (
                b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % (self.path, self.host_header, GIANT_DECLARED)
            )
        else:
            slot.pending = self.request
        if slot.kind != "non_readers":
            self.selector.register(sock, selectors.EVENT_READ, slot)

    def _lost(self, slot: Slot, now: float, *, renewed: bool = False) -> None:
        sock = slot.sock
        if sock is None:
            return
        if slot.kind != "non_readers":
            self.selector.unregister(sock)
        if renewed:
            # An abortive close (RST): the server learns at once that nobody will read.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()
        slot.sock = None
        slot.pending = b""
        stats = self.stats[slot.kind]
        if renewed:
            stats.renewed += 1
            slot.reopen_at = now
        else:
            stats.closed_by_server += 1
            slot.reopen_at = now + self.mix.reconnect_s

    # -- sending -------------------------------------------------------------------------------

    def _refill(self, slot: Slot, now: float) -> None:
        """Decides what a connection sends next, once its current piece is out."""
        mix = self.mix
        if slot.kind == "slow_headers":
            if now >= slot.next_send:
                slot.pending = b"x-trickle-%d: %d\r\n" % (slot.number, int(now * 1000))
                slot.next_send = now + mix.trickle_s
        elif slot.kind == "giant_bodies":
            if slot.sent_on_connection < mix.giant_cap and now >= slot.next_send:
                slot.pending = b"0" * CHUNK
                slot.next_send = now + CHUNK / mix.giant_rate
        elif slot.requests_on_connection < mix.requests_per_non_reader:
            slot.pending = self.request

    def _send(self, slot: Slot, now: float) -> None:
        sock = slot.sock
        if sock is None:
            return
        if not slot.pending:
            self._refill(slot, now)
        if not slot.pending:
            return
        try:
            sent = sock.send(slot.pending)
        except BlockingIOError:
            return
        except OSError:
            self._lost(slot, now)
            return
        stats = self.stats[slot.kind]
        stats.bytes_sent += sent
        slot.sent_on_connection += sent
        slot.pending = slot.pending[sent:]
        if not slot.pending and slot.kind == "non_readers":
            slot.requests_on_connection += 1
            stats.requests_sent += 1

    def _read(self, slot: Slot, now: float) -> None:
        sock = slot.sock
        if sock is None:
            return
        try:
            data = sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._lost(slot, now)
            return
        if not data:
            self._lost(slot, now)
            return
        if not slot.answered and data.startswith(b"HTTP/"):
            slot.answered = True
            self.stats[slot.kind].saw(data[:16])

    # -- the loop ------------------------------------------------------------------------------

    def _ready(self) -> bool:
        """Every connection opened once, every non-reader's requests sent once."""
        return all(
            slot.opens > 0
            and (
                slot.kind != "non_readers"
                or slot.opens > 1
                or slot.requests_on_connection >= self.mix.requests_per_non_reader
            )
            for slot in self.slots
        )

    def run(self, seconds: float) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + seconds
        mix = self.mix
        # Non-readers start spread over the hold time, so that they renew one at a time.
        for slot in self.slots:
            if slot.kind == "non_readers":
                slot.reopen_at = started + slot.number * mix.hold_s / max(mix.non_readers, 1)
        ready_at: float | None = None
        while (now := time.monotonic()) < deadline and not self.stopping:
            for slot in self.slots:
                if slot.sock is None and now >= slot.reopen_at:
                    self._open(slot, now)
                if slot.kind == "non_readers" and slot.sock and now - slot.opened_at > mix.hold_s:
                    self._lost(slot, now, renewed=True)
                    continue
                self._send(slot, now)
            for key, _ in self.selector.select(timeout=0.01):
                self._read(key.data, time.monotonic())
            if ready_at is None and self._ready():
                ready_at = time.monotonic() - started
                print(READY_LINE, flush=True)
        held = sum(1 for slot in self.slots if slot.sock is not None)
        for slot in self.slots:
            if slot.sock is not None:
                with contextlib.suppress(OSError):
                    slot.sock.close()
        return {
            "seconds": round(time.monotonic() - started, 3),
            "ready_after_s": None if ready_at is None else round(ready_at, 3),
            "mix": self.mix.__dict__,
            "held_at_end": held,
            "connect_errors": self.connect_errors,
            "kinds": {kind: stats.__dict__ for kind, stats in self.stats.items()},
        }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/server/attack.py", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True, help="inference path, e.g. /v1/models/m:predict")
    p.add_argument("--body", type=Path, required=True, help="file holding the non-readers' body")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--slow-headers", type=int, default=Mix.slow_headers)
    p.add_argument("--non-readers", type=int, default=Mix.non_readers)
    p.add_argument("--giant-bodies", type=int, default=Mix.giant_bodies)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mix = Mix(
        slow_headers=min(args.slow_headers, 32),
        non_readers=min(args.non_readers, 16),
        giant_bodies=min(args.giant_bodies, 8),
    )
    attack = Attack(args.host, args.port, path=args.path, body=args.body.read_bytes(), mix=mix)

    def stop(_signum: int, _frame: object) -> None:
        attack.stopping = True

    signal.signal(signal.SIGTERM, stop)
    result = attack.run(args.seconds)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
