"""The load generator: wrk with one Lua script per protocol (lua/v1.lua, lua/v2.lua)."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parent / "lua"
RESULT_PREFIX = "BENCH_RESULT "
REQUEST_TIMEOUT_S = 10  # wrk's own default (2 s) would count slow peers' answers as errors

INSTALL_HINT = (
    "wrk (the HTTP load generator) is not on PATH. On Debian/Ubuntu: "
    "`sudo apt-get install -y wrk` (as root: `apt-get update && apt-get install -y wrk`)."
)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version(path: str) -> str:
    done = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors_status: int  # HTTP status >= 400
    errors_socket: int  # connect + read + write + timeout
    latency_us: dict[str, float]
    wrk_cpu_s: float
    raw: dict[str, Any]

    @property
    def errors(self) -> int:
        return self.errors_status + self.errors_socket

    @property
    def ok_rps(self) -> float:
        """Answers without an error status, per second."""
        good = max(self.requests - self.errors_status, 0)
        return good / self.duration_s if self.duration_s > 0 else 0.0


def run_wrk(
    *,
    wrk: str,
    base_url: str,
    protocol: str,
    model_name: str,
    body: Path,
    connections: int,
    duration_s: float,
    threads: int,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    script = LUA_DIR / f"{protocol}.lua"
    cmd = [
        wrk,
        "-t",
        str(max(1, min(threads, connections))),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        f"{REQUEST_TIMEOUT_S}s",
        "-s",
        str(script),
        *(arg for header in headers for arg in ("-H", header)),
        base_url,
        "--",
        model_name,
        str(body),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next(
        (ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)),
        None,
    )
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
        )
    data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
    err = data["errors"]
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        errors_status=int(err["status"]),
        errors_socket=int(err["connect"] + err["read"] + err["write"] + err["timeout"]),
        latency_us={k: float(v) for k, v in data["latency_us"].items()},
        wrk_cpu_s=wrk_cpu,
        raw=data,
    )
