"""Start detached processes, recognise them again later, and stop exactly those.

Components are started in a new session so they outlive ``python -m localcluster up`` (then
``make run`` can use the cluster). A pid alone is not an identity (pids are reused), so we
record the process start time too and only ever signal a pid whose start time matches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class Record:
    """What ``down`` needs to find a process again, persisted in ``state.json``."""

    name: str
    pid: int
    create_time: float
    argv0: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        return cls(str(d["name"]), int(d["pid"]), float(d["create_time"]), str(d["argv0"]))


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago.

    All sockets are held open until every port is picked, so the kernel cannot hand out one
    port twice. Another process may still grab one before our component binds it; that shows
    up as a component failing at startup with "address already in use".
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], Record]:
    """Start ``argv`` detached from our session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0  # exited already; alive() will say so
    return proc, Record(name, proc.pid, create_time, argv[0])


def _process(rec: Record) -> psutil.Process | None:
    """The live process behind a record, or None if it is gone or the pid was reused."""
    try:
        p = psutil.Process(rec.pid)
        if abs(p.create_time() - rec.create_time) > 0.05:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return p


def alive(rec: Record) -> bool:
    return _process(rec) is not None


def stop(records: Sequence[Record], *, timeout: float = 10.0) -> list[str]:
    """SIGTERM all at once, SIGKILL whatever still runs after ``timeout``; names stopped.

    In parallel because each component takes 1-3 s to shut down gracefully. Also reaps the
    processes that are our children (started in this Python process), so no zombie stays.
    """
    procs = {}
    for rec in records:
        p = _process(rec)
        if p is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
                procs[p.pid] = (rec.name, p)
    _, stragglers = psutil.wait_procs([p for _, p in procs.values()], timeout=timeout)
    for p in stragglers:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(stragglers, timeout=5)
    for rec in records:
        _reap(rec.pid)
    return [name for name, _ in procs.values()]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log, for error messages that explain themselves."""
    try:
        data = path.read_bytes()[-64_000:]
    except FileNotFoundError:
        return f"(no log at {path})"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in text)
