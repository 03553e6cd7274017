"""Stopping the real node without leaving anything on the host.

After the node's processes are stopped (``realnode.py`` decides the order): every pod removed
through the CRI, containerd's leftover shims killed, kube-proxy's and kube-router's rules
removed, mounts below the cluster root unmounted, the ``kubepods`` cgroups removed.
``host.restore_host`` then reverts the host settings.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil

from localcluster import mounts
from localcluster.host import sh
from localcluster.nodeconfig import NodeLayout, env

Log = Callable[[str], None]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def remove_pods(crictl: Path | None, lay: NodeLayout, log: Log, timeout: float = 60) -> None:
    """Stop and remove every pod through the CRI: CNI DEL, netns and mounts go properly."""
    if crictl is None or not lay.containerd_sock.exists():
        return
    endpoint = f"unix://{lay.containerd_sock}"
    base = [str(crictl), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}"]
    base += ["--timeout=20s"]
    try:
        proc = subprocess.run(
            [*base, "rmp", "--all", "--force"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log(f"  crictl rmp timed out after {timeout:.0f}s; killing what is left")
        return
    removed = proc.stdout.count("Removed sandbox")
    if removed:
        log(f"  removed {removed} pod sandboxes through the CRI")
    if proc.returncode != 0 and proc.stderr.strip():
        log(f"  crictl rmp: {proc.stderr.strip()[-500:]}")


def kill_shims(lay: NodeLayout, log: Log) -> None:
    """SIGKILL the containerd shims (and so their containers) that belong to our containerd.

    Shims outlive containerd by design; ours are recognised by the address of our socket on
    their command line, so no other containerd's shims are touched.
    """
    address = str(lay.containerd_sock)
    shims = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and "containerd-shim" in cmd[0] and address in cmd:
            shims.append(proc)
    for shim in shims:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in shim.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            shim.kill()
    psutil.wait_procs(shims, timeout=10)
    if shims:
        log(f"  killed {len(shims)} leftover containerd shims")


def proxy_cleanup(binary: Path | None, log: Log) -> None:
    """``kube-proxy --cleanup`` removes every KUBE-* rule and chain kube-proxy made."""
    if binary is None:
        return
    try:
        subprocess.run(
            [str(binary), "--cleanup", "--v=0"],
            capture_output=True,
            timeout=60,
            check=False,
            env=env(),
        )
    except subprocess.TimeoutExpired:
        log("  kube-proxy --cleanup timed out")


#: What kube-router's policy controller creates: chain and ipset name prefixes.
_ROUTER_CHAINS = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")


_ROUTER_IPSETS = ("KUBE-SRC-", "KUBE-DST-", "kube-router-", "TMP-")


def remove_router_rules(log: Log) -> None:
    """Remove kube-router's chains, the jumps to them, and its ipsets.

    ``kube-router --cleanup-config`` v2.1.0 panics on a kernel without IPVS before it is
    done, so this does the same by name: only kube-router uses these prefixes.
    """
    removed = 0
    for table in ("filter", "nat", "mangle"):
        rules = sh(["iptables", "-w", "5", "-t", table, "-S"], check=False).splitlines()
        ours = {
            line.split()[1]
            for line in rules
            if line.startswith("-N ") and line.split()[1].startswith(_ROUTER_CHAINS)
        }
        if not ours:
            continue
        for line in rules:
            parts = shlex.split(line)
            jumps_to_ours = "-j" in parts and parts[parts.index("-j") + 1] in ours
            if parts[:1] == ["-A"] and parts[1] not in ours and jumps_to_ours:
                sh(["iptables", "-w", "5", "-t", table, "-D", *parts[1:]], check=False)
        for chain in ours:
            sh(["iptables", "-w", "5", "-t", table, "-F", chain], check=False)
        for chain in ours:
            sh(["iptables", "-w", "5", "-t", table, "-X", chain], check=False)
        removed += len(ours)
    if shutil.which("ipset"):
        for name in sh(["ipset", "list", "-n"], check=False).split():
            if name.startswith(_ROUTER_IPSETS):
                sh(["ipset", "destroy", name], check=False)
    if removed:
        log(f"  removed kube-router's {removed} iptables chains and its ipsets")


def unmount_under(path: Path) -> int:
    """Lazy-unmount everything below ``path`` (volumes, rootfs, netns, shm), deepest first."""
    return len(mounts.unmount_under(path))


def remove_cgroups(log: Log) -> None:
    """Remove the ``kubepods`` cgroup trees the kubelet made (they are empty once pods are)."""
    removed = 0
    # v1: one tree per controller (/sys/fs/cgroup/<controller>/kubepods); v2: one tree.
    tops = [base / "kubepods" for base in CGROUP_ROOT.iterdir() if base.is_dir()]
    tops.append(CGROUP_ROOT / "kubepods")
    for top in tops:
        if not top.is_dir() or top.is_symlink():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda d: len(d.parts))
        for cgroup in reversed(dirs):  # children before parents
            with contextlib.suppress(OSError):
                cgroup.rmdir()
                removed += 1
    if removed:
        log(f"  removed {removed} pod cgroups")
