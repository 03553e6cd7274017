"""The one-line reason a failed process leaves for `kubectl describe pod` (the termination log).

Kubernetes shows the content of /dev/termination-log as the container's termination message, so a
load or fetch failure is visible without reading logs (KServe users get `KeyError: 0` instead).
"""

from __future__ import annotations

from pathlib import Path

# Kubernetes keeps at most 4096 bytes of a termination message.
_MAX_BYTES = 4096

# Exit codes of a worker process that mean "this can never work": the parent stops, no restart.
EXIT_LOAD_FAILED = 3
EXIT_BIND_FAILED = 4


def one_line(message: str) -> str:
    """Collapses whitespace so the reason fits on one line."""
    return " ".join(message.split())


def write_reason(message: str, path: str) -> bool:
    """Writes the reason when the termination log exists (it does in a pod); True if written."""
    target = Path(path)
    if not target.exists():
        return False
    data = one_line(message).encode("utf-8", "replace")[:_MAX_BYTES]
    try:
        target.write_bytes(data + b"\n")
    except OSError:
        return False
    return True
