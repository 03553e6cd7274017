"""Host changes of the real node, each recorded in an undo journal, and their undoing.

``prepare_host`` sets up what the node needs (a bridge with the pod network ``10.244.0.0/24``,
reachable only from this machine; two sysctls; mount propagation of ``/``; an iptables guard
that keeps pod traffic on the bridge) and records each change in a ``HostUndo`` journal as it
makes it, saved in the cluster's ``state.json``; ``restore_host`` reverts exactly that, even
from another process or after a failure halfway. Also: the checks that this host can run a
node, its Debian packages, and the one-node-per-machine claim (one bridge, one ``/kubepods``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localcluster.nodeconfig import BRIDGE, CNI_BIN_DIR, NODE_IP

Log = Callable[[str], None]

GUARD_CHAIN = "LOCALCLUSTER-GUARD"

CLAIM_FILE = Path("/run/localcluster/real-node.json")

#: Writing these is global; ``restore_host`` puts the old values back.
SYSCTLS = {
    "net/ipv4/ip_forward": "1",  # pod -> Service IP -> pod is routed through the host
    "net/bridge/bridge-nf-call-iptables": "1",  # kube-proxy's DNAT must see bridged packets
}

HOST_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "ip": "iproute2",
    "iptables": "iptables",
    "ipset": "ipset",
    "mount": "mount",
    "tar": "tar",
}


#: Debian packages for running the node and building its images (``python -m localcluster
#: deps`` installs the missing ones).
DEBIAN_PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "ipset",
    "conntrack",
    "iproute2",
    "buildah",
    "debootstrap",
    "gcc",
    "libc6-dev",
)


class NodeError(RuntimeError):
    """The host cannot run a real node, or setting it up failed."""


@dataclass
class HostUndo:
    """The undo journal: what ``prepare_host`` changed, filled in step by step."""

    #: sysctl key -> the value it had before.
    sysctls: dict[str, str] = field(default_factory=dict)
    #: The propagation ``/`` had before we made it shared (None: untouched).
    propagation: str | None = None
    bridge: bool = False
    guard: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HostUndo:
        return cls(
            sysctls={str(k): str(v) for k, v in (d.get("sysctls") or {}).items()},
            propagation=d.get("propagation"),
            bridge=bool(d.get("bridge")),
            guard=bool(d.get("guard")),
        )


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """A host command with a deadline; NodeError with its stderr when it fails."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise NodeError(f"`{' '.join(argv)}` timed out after {timeout:.0f}s") from err
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# -- checks and the one-node-per-machine claim ----------------------------------------------


def check_host() -> None:
    """Fail early, with the fix, when this machine cannot run the node."""
    if os.geteuid() != 0:
        raise NodeError("a real node needs root (containerd, cgroups, a bridge, iptables)")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not (CNI_BIN_DIR / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if missing:
        raise NodeError(
            f"missing packages for a real node: apt-get install -y {' '.join(sorted(missing))} "
            "(or `python -m localcluster deps`)"
        )
    if not Path("/proc/sys/net/bridge").is_dir():
        raise NodeError("the kernel has no br_netfilter (/proc/sys/net/bridge): modprobe it")


def missing_packages() -> list[str]:
    """The DEBIAN_PACKAGES that dpkg does not list as installed."""
    missing = []
    for package in DEBIAN_PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout
        if "install ok installed" not in status:
            missing.append(package)
    return missing


def install_packages(log: Log) -> list[str]:
    """apt-get install what is missing (bounded in time); returns what was installed."""
    missing = missing_packages()
    if not missing:
        log("all Debian packages of the real node are installed")
        return []
    if os.geteuid() != 0:
        raise NodeError(f"installing {' '.join(missing)} needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"apt-get install -y {' '.join(missing)}")
    for argv, timeout in (
        (["apt-get", "update"], 300),
        (["apt-get", "install", "-y", *missing], 900),
    ):
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise NodeError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr[-2000:]}")
    return missing


def claim_holder() -> Path | None:
    """The root of the cluster that last took the real-node slot, if any."""
    try:
        return Path(json.loads(CLAIM_FILE.read_text())["root"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def claim(root: Path, is_running: Callable[[Path], bool]) -> None:
    """Take the machine's single real-node slot, or explain who holds it."""
    holder = claim_holder()
    if holder is not None and holder != root and is_running(holder):
        raise NodeError(
            f"another real node is running (cluster under {holder}); "
            f"`python -m localcluster --root {holder} down` first"
        )
    CLAIM_FILE.parent.mkdir(parents=True, exist_ok=True)
    CLAIM_FILE.write_text(json.dumps({"root": str(root), "pid": os.getpid()}))


def release(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
        if Path(json.loads(CLAIM_FILE.read_text())["root"]) == root:
            CLAIM_FILE.unlink()


# -- host set-up and its undoing ------------------------------------------------------------


def _propagation(target: str = "/") -> str:
    out = sh(["findmnt", "-n", "-o", "PROPAGATION", target], check=False).strip()
    return out or "unknown"


def _iptables_has(*rule: str, table: str = "filter") -> bool:
    return (
        subprocess.run(
            ["iptables", "-w", "5", "-t", table, "-C", *rule],
            capture_output=True,
            check=False,
            timeout=30,
        ).returncode
        == 0
    )


def prepare_host(log: Log, undo: HostUndo, service_cidr: str) -> None:
    """Bridge, sysctls, shared mounts, iptables guard; records in ``undo`` what to revert.

    ``undo`` is filled step by step, so after a failure halfway it still says what to revert.
    """
    # The kubelet needs mount propagation (volumes, mountPropagation); `/` is private here.
    before = _propagation("/")
    if "shared" not in before:
        sh(["mount", "--make-rshared", "/"])
        undo.propagation = before
    for key, value in SYSCTLS.items():
        path = Path("/proc/sys") / key
        old = path.read_text().strip()
        if old != value:
            path.write_text(value)
            undo.sysctls[key] = old
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    undo.bridge = True  # the name is ours alone: one left by a crashed run goes too
    sh(["ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE])
    sh(["ip", "link", "set", BRIDGE, "up"])
    # Host -> ClusterIP leaves through the bridge, never eth0, even before kube-proxy's DNAT.
    sh(["ip", "route", "replace", service_cidr, "dev", BRIDGE, "src", NODE_IP])
    # Forwarding is on, so keep pod traffic on the bridge: nothing in or out of other links.
    sh(["iptables", "-w", "5", "-N", GUARD_CHAIN], check=False)
    sh(["iptables", "-w", "5", "-F", GUARD_CHAIN])
    sh(["iptables", "-w", "5", "-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"])
    sh(["iptables", "-w", "5", "-A", GUARD_CHAIN, "!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"])
    if not _iptables_has("FORWARD", "-j", GUARD_CHAIN):
        sh(["iptables", "-w", "5", "-I", "FORWARD", "1", "-j", GUARD_CHAIN])
    undo.guard = True
    log(f"  host: bridge {BRIDGE} {NODE_IP}/24, forwarding kept on the bridge, / rshared")


def _remove_chain(table: str, chain: str, parents: Sequence[str]) -> None:
    for parent in parents:
        while _iptables_has(parent, "-j", chain, table=table):
            sh(["iptables", "-w", "5", "-t", table, "-D", parent, "-j", chain], check=False)
    sh(["iptables", "-w", "5", "-t", table, "-F", chain], check=False)
    sh(["iptables", "-w", "5", "-t", table, "-X", chain], check=False)


#: Chains the kubelet creates itself (kube-proxy's are removed by ``kube-proxy --cleanup``).
_KUBELET_CHAINS = {
    "mangle": ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"),
    "nat": ("KUBE-KUBELET-CANARY",),
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"),
}


def restore_host(undo: HostUndo, log: Log) -> None:
    """Undo ``prepare_host`` (and the kubelet's own chains); safe to call twice."""
    if undo.guard:
        _remove_chain("filter", GUARD_CHAIN, ["FORWARD"])
    for table, chains in _KUBELET_CHAINS.items():
        for chain in chains:
            _remove_chain(table, chain, ["INPUT", "OUTPUT", "FORWARD", "PREROUTING"])
    if undo.bridge and Path(f"/sys/class/net/{BRIDGE}").exists():
        sh(["ip", "link", "del", BRIDGE], check=False)
    for key, old in undo.sysctls.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(str(old))
    if undo.propagation and "private" in undo.propagation:
        sh(["mount", "--make-rprivate", "/"], check=False)
    log("  host: bridge, sysctls, iptables guard and mount propagation restored")


def firewall_ready() -> bool:
    """kube-router has installed its filter chains (its first full sync is done)."""
    return (
        subprocess.run(
            ["iptables", "-w", "5", "-S", "KUBE-ROUTER-FORWARD"],
            capture_output=True,
            check=False,
            timeout=30,
        ).returncode
        == 0
    )
