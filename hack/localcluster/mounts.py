"""Mount points below a directory, and unmounting them (pods' volumes, debootstrap's /proc)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path


def mounts_under(path: Path) -> list[str]:
    """Mount points strictly below ``path`` (from /proc/self/mountinfo)."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    mounts = []
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                mounts.append(target)
    return mounts


def unmount_under(path: Path) -> list[str]:
    """Unmount everything mounted below ``path``, deepest first (debootstrap leaves /proc)."""
    mounts = mounts_under(path)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True, timeout=30)
    return mounts
