"""Find, or build from pinned Go modules, the control-plane binaries.

Release binaries cannot be downloaded here (no GitHub, no Google storage), but the Go module
proxy is reachable, so we build from source. A cold build takes tens of minutes on 2 cores,
hence the results are cached by version *outside* the clone
(``${XDG_CACHE_HOME:-~/.cache}/modeldeploy/bin/<name>-<version>/<name>``) so that CI in a
fresh clone on the same machine, and every later run, reuses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from localcluster import versions
from localcluster.gomod import go_env, go_mod_download

Log = Callable[[str], None]

#: Directories with ready binaries; checked in this order before the cache.
OVERRIDE_ENV_VARS = ("LOCALCLUSTER_BIN_DIR", "KUBEBUILDER_ASSETS")

GOMOD_DIR = Path(__file__).resolve().parent.parent / "gomod"

_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


class BuildError(RuntimeError):
    """A ``go build`` failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class Binary:
    """One executable, the Go wrapper module that pins it, and how to stamp its version."""

    name: str
    version: str
    module: str  # the pinned upstream module (for the .info/.sum used in stamping)
    gomod: str  # folder under hack/gomod/
    package: str
    stamp: Callable[[Binary], Mapping[str, str]] = field(compare=False, repr=False)
    cgo: bool = False

    @property
    def cache_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def cached_path(self) -> Path:
        return self.cache_dir / self.name


def _module_info(module: str, version: str) -> dict[str, str]:
    """``go mod download -json`` for one module, plus its tag's time: fast once cached."""
    info = go_mod_download(module, version)
    info["Time"] = json.loads(Path(info["Info"]).read_text())["Time"]
    return info


def _kubernetes_stamp(b: Binary) -> Mapping[str, str]:
    """Without these, the binaries report ``v0.0.0-master`` and confuse version-aware clients.

    buildDate is the tag's time, so rebuilding gives the same bytes. The git commit is not
    known offline (the proxy's .info has no Origin), so gitCommit carries the module's h1 sum,
    which identifies the exact source just as well.
    """
    info = _module_info(b.module, b.version)
    major, minor, _ = b.version.lstrip("v").split(".")
    values = {
        "gitVersion": b.version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": info["Sum"],
        "gitTreeState": "clean",
        "buildDate": info["Time"],
    }
    return {f"{pkg}.{k}": v for pkg in _VERSION_PACKAGES for k, v in values.items()}


def _etcd_stamp(b: Binary) -> Mapping[str, str]:
    # etcd's Version is a constant already; only the git SHA is a variable.
    return {"go.etcd.io/etcd/api/v3/version.GitSHA": _module_info(b.module, b.version)["Sum"]}


def _metrics_server_stamp(b: Binary) -> Mapping[str, str]:
    """client-go's version package: what metrics-server's Makefile stamps and --version shows."""
    info = _module_info(b.module, b.version)
    values = {"gitVersion": b.version, "gitCommit": info["Sum"], "buildDate": info["Time"]}
    return {f"k8s.io/client-go/pkg/version.{k}": v for k, v in values.items()}


def _cri_tools_stamp(b: Binary) -> Mapping[str, str]:
    return {"sigs.k8s.io/cri-tools/pkg/version.Version": b.version}


def _kube_router_stamp(b: Binary) -> Mapping[str, str]:
    info = _module_info(b.module, b.version)
    pkg = "github.com/cloudnativelabs/kube-router/v2/pkg/version"
    return {f"{pkg}.Version": b.version, f"{pkg}.BuildDate": info["Time"]}


def _coredns_stamp(b: Binary) -> Mapping[str, str]:
    # coremain.CoreVersion is a constant of the tagged source; GitCommit is what -version adds.
    return {
        "github.com/coredns/coredns/coremain.GitCommit": _module_info(b.module, b.version)["Sum"]
    }


def _no_stamp(_: Binary) -> Mapping[str, str]:
    # kwok's consts.Version is "0.7.0" in the tagged source already.
    return {}


#: Folder under hack/gomod/ -> the upstream module it pins, its version, its version stamp.
SOURCES: dict[str, tuple[str, str, Callable[[Binary], Mapping[str, str]]]] = {
    "etcd": ("go.etcd.io/etcd/server/v3", versions.ETCD_VERSION, _etcd_stamp),
    "kubernetes": ("k8s.io/kubernetes", versions.KUBERNETES_VERSION, _kubernetes_stamp),
    "kwok": ("sigs.k8s.io/kwok", versions.KWOK_VERSION, _no_stamp),
    "metrics-server": (
        "sigs.k8s.io/metrics-server",
        versions.METRICS_SERVER_VERSION,
        _metrics_server_stamp,
    ),
    "cri-tools": ("sigs.k8s.io/cri-tools", versions.CRI_TOOLS_VERSION, _cri_tools_stamp),
    "kube-router": (
        "github.com/cloudnativelabs/kube-router/v2",
        versions.KUBE_ROUTER_VERSION,
        _kube_router_stamp,
    ),
    "coredns": ("github.com/coredns/coredns", versions.COREDNS_VERSION, _coredns_stamp),
    "prometheus": ("github.com/prometheus/prometheus", versions.PROMETHEUS_VERSION, _no_stamp),
}


@dataclass(frozen=True)
class Build:
    """One row of ``BINARIES``: a binary, its wrapper module, its main package."""

    name: str
    gomod: str
    package: str
    #: Only ``build --real-node`` builds it (KWOK's cluster, CI's, stays a 10-minute build).
    real_node: bool = False
    #: The kubelet needs cgo (cadvisor, libcontainer), and so gcc.
    cgo: bool = False


#: Every binary the harness builds, in build order (etcd and the apiserver first); the
#: wrapper modules' ``tool`` blocks are generated from it (gomod.py).
BINARIES: tuple[Build, ...] = (
    Build("etcd", "etcd", "go.etcd.io/etcd/server/v3"),  # its module root is the main package
    Build("kube-apiserver", "kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver"),
    Build("kube-controller-manager", "kubernetes", "k8s.io/kubernetes/cmd/kube-controller-manager"),
    Build("kube-scheduler", "kubernetes", "k8s.io/kubernetes/cmd/kube-scheduler"),
    Build("kubectl", "kubernetes", "k8s.io/kubernetes/cmd/kubectl"),
    Build("kwok", "kwok", "sigs.k8s.io/kwok/cmd/kwok"),
    # promtool: `make test` checks the manifests/monitoring/ rules with it.
    Build("promtool", "prometheus", "github.com/prometheus/prometheus/cmd/promtool"),
    # The real node: built from the same pinned module as the control plane, one version.
    Build("kubelet", "kubernetes", "k8s.io/kubernetes/cmd/kubelet", real_node=True, cgo=True),
    Build("kube-proxy", "kubernetes", "k8s.io/kubernetes/cmd/kube-proxy", real_node=True),
    # Feeds the HPA real CPU usage from the kubelet's summary API.
    Build(
        "metrics-server",
        "metrics-server",
        "sigs.k8s.io/metrics-server/cmd/metrics-server",
        real_node=True,
    ),
    # ``down`` removes the pods through the CRI, so their network namespaces, mounts and IP
    # leases go the proper way before containerd stops.
    Build("crictl", "cri-tools", "sigs.k8s.io/cri-tools/cmd/crictl", real_node=True),
    # Network policy controller only (iptables + ipset): it enforces NetworkPolicy on this
    # kernel, which lacks the nft queue that kube-network-policies needs.
    Build(
        "kube-router",
        "kube-router",
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
        real_node=True,
    ),
    # Cluster DNS; the module root is CoreDNS's main package, all its plugins in.
    Build("coredns", "coredns", "github.com/coredns/coredns", real_node=True),
)


def _binary(row: Build) -> Binary:
    module, version, stamp = SOURCES[row.gomod]
    return Binary(row.name, version, module, row.gomod, row.package, stamp, cgo=row.cgo)


def tools(gomod: str) -> list[str]:
    """The main packages built from the wrapper module ``gomod`` (its ``tool`` block)."""
    return [row.package for row in BINARIES if row.gomod == gomod]


def all_binaries() -> list[Binary]:
    """The control plane ``build`` produces by default, in order: etcd and the apiserver first."""
    return [_binary(row) for row in BINARIES if not row.real_node]


def node_binaries() -> list[Binary]:
    """What ``up --real-node`` needs on top of the control plane: kubelet, kube-proxy,
    metrics-server, crictl, kube-router and CoreDNS."""
    return [_binary(row) for row in BINARIES if row.real_node]


def known_binaries() -> list[Binary]:
    return [*all_binaries(), *node_binaries()]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modeldeploy" / "bin"


def override_dirs() -> list[Path]:
    return [Path(os.environ[v]) for v in OVERRIDE_ENV_VARS if os.environ.get(v)]


def _is_executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def locate(b: Binary) -> Path | None:
    """Where a ready binary is: an override directory first, then the version cache."""
    for d in override_dirs():
        if _is_executable(d / b.name):
            return d / b.name
    return b.cached_path if _is_executable(b.cached_path) else None


def locate_all(names: Iterable[str] | None = None) -> dict[str, Path | None]:
    """Paths of ``names`` (default: the control plane); None for those not built."""
    if names is None:
        return {b.name: locate(b) for b in all_binaries()}
    wanted = set(names)
    return {b.name: locate(b) for b in known_binaries() if b.name in wanted}


def _check_wrapper(b: Binary) -> Path:
    """Refuse to build from a wrapper module that pins another version than versions.py."""
    moddir = GOMOD_DIR / b.gomod
    gomod = moddir / "go.mod"
    if not gomod.is_file():
        raise BuildError(f"{gomod} is missing (is this a source checkout?)")
    pinned = re.search(rf"^\s*{re.escape(b.module)}\s+(\S+)", gomod.read_text(), re.MULTILINE)
    if not pinned or pinned.group(1) != b.version:
        found = pinned.group(1) if pinned else "nothing"
        raise BuildError(
            f"{gomod} pins {b.module} {found}, versions.py wants {b.version}: "
            "run `python -m localcluster gomod`"
        )
    return moddir


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialize builds of one binary across processes (a developer and CI on one machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _build_one(b: Binary, *, jobs: int, log: Log) -> float:
    """``go build`` one binary into the cache; returns the seconds it took.

    ``-v`` lists each package as it is compiled; we count them to show progress, because
    a cold kube-apiserver build is silent for many minutes otherwise.
    """
    moddir = _check_wrapper(b)
    ldflags = " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in b.stamp(b).items())])
    b.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = b.cache_dir / f".{b.name}.tmp{os.getpid()}"
    cmd = [
        "go",
        "build",
        f"-p={jobs}",
        "-v",
        "-trimpath",
        "-buildvcs=false",
        "-mod=readonly",
        "-ldflags",
        ldflags,
        "-o",
        str(tmp),
        b.package,
    ]
    start = time.monotonic()
    tail: list[str] = []
    packages = 0
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(15):
            log(f"  ... {b.name}: {_fmt(time.monotonic() - start)}, {packages} packages compiled")

    proc = subprocess.Popen(
        cmd,
        cwd=moddir,
        env=go_env(cgo=b.cgo),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        for line in proc.stderr or ():
            if not line.startswith("go: "):  # "go: downloading ..." is not a package
                packages += 1
            tail = [*tail[-39:], line.rstrip()]
        rc = proc.wait()
    finally:
        done.set()
        thread.join()
        if proc.poll() is None:
            proc.kill()
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"go build {b.package} failed (exit {rc}):\n" + "\n".join(tail))
    tmp.replace(b.cached_path)  # atomic: readers never see a half-written binary
    return time.monotonic() - start


def build(
    names: Iterable[str] | None = None,
    *,
    jobs: int = 2,
    force: bool = False,
    verbose: bool = True,
    log: Log = print,
) -> dict[str, Path]:
    """Make sure every binary exists; build the missing ones one after another.

    One at a time with ``-p 2`` keeps a 2-core machine responsive and lets the Go build
    cache share the many packages that kube-apiserver, -controller-manager and -scheduler
    have in common.
    """
    if shutil.which("go") is None:
        raise BuildError(
            "`go` is not on PATH; install Go >= 1.26.7 (promtool needs it) or set "
            "LOCALCLUSTER_BIN_DIR"
        )
    wanted = set(names) if names is not None else None
    pool = known_binaries() if wanted is not None else all_binaries()
    todo = [b for b in pool if wanted is None or b.name in wanted]
    if any(b.cgo for b in todo) and shutil.which("gcc") is None:
        raise BuildError("the kubelet is built with cgo and needs gcc: apt-get install -y gcc")
    result: dict[str, Path] = {}
    built = 0
    total_start = time.monotonic()
    for i, b in enumerate(todo, 1):
        found = None if force else locate(b)
        if found is not None:
            if verbose:
                log(f"[{i}/{len(todo)}] {b.name} {b.version}: ready at {found}")
            result[b.name] = found
            continue
        with _lock(cache_root() / f".{b.name}-{b.version}.lock"):
            if not force and _is_executable(b.cached_path):  # another process built it meanwhile
                result[b.name] = b.cached_path
                continue
            log(f"[{i}/{len(todo)}] building {b.name} {b.version} (go build, may take minutes)")
            seconds = _build_one(b, jobs=jobs, log=log)
            built += 1
            log(f"[{i}/{len(todo)}] built {b.name} in {_fmt(seconds)} -> {b.cached_path}")
            result[b.name] = b.cached_path
    if verbose or built:
        log(f"binaries ready in {_fmt(time.monotonic() - total_start)}")
    return result


def require(names: Iterable[str]) -> dict[str, Path]:
    """Paths of binaries that must already exist; the error says how to get them."""
    found = locate_all(names)
    missing = sorted(n for n, p in found.items() if p is None)
    if missing:
        raise FileNotFoundError(
            f"missing binaries: {', '.join(missing)}; run `make binaries` "
            f"(python -m localcluster build) or point LOCALCLUSTER_BIN_DIR at them"
        )
    return {n: p for n, p in found.items() if p is not None}


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
