"""``python -m localcluster <build|deps|images|up|down|status|env|gomod>``: the Makefile's entry."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from localcluster import binaries, gomod, host, images
from localcluster.cluster import Cluster, ClusterError, repo_root
from localcluster.host import NodeError


def _add_real_node_flag(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--real-node``, on by default when LOCALCLUSTER_REAL_NODE is 1, true or yes.

    ``make cluster-up REAL_NODE=1`` exports LOCALCLUSTER_REAL_NODE=1 to ask for a real node.
    """
    env = os.environ.get("LOCALCLUSTER_REAL_NODE", "").strip().lower()
    p.add_argument(
        "--real-node", action="store_true", default=env in {"1", "true", "yes"}, help=help_text
    )


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(root=args.root, build_missing=not args.no_build, real_node=args.real_node)


def cmd_build(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    names = None
    if args.real_node:
        names = [b.name for b in binaries.known_binaries()]
    paths = binaries.build(names, jobs=args.jobs, force=args.force, log=binaries.stderr_log)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    binaries.stderr_log(f"build: {time.monotonic() - t0:.1f}s")
    return 0


def cmd_deps(_: argparse.Namespace) -> int:
    for package in host.install_packages(binaries.stderr_log):
        print(package)
    return 0


def cmd_images(_: argparse.Namespace) -> int:
    t0 = time.monotonic()
    for image in images.build_all(binaries.stderr_log):
        print(f"{image.name}\t{image.archive}")
    binaries.stderr_log(f"images: {time.monotonic() - t0:.1f}s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    c = _cluster(args)
    started = c.up(timeout=args.timeout)
    if started:
        binaries.stderr_log(f"up: {time.monotonic() - t0:.1f}s")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _cluster(args).down(keep_logs=args.keep_logs)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    s = _cluster(args).status()
    if s.existing:
        print(f"existing cluster (KUBECONFIG={s.kubeconfig})")
        return 0
    if not s.components:
        print(f"down (no cluster under {s.root})")
        return 1
    print(f"root:       {s.root}")
    print(f"server:     {s.server}")
    print(f"kubeconfig: {s.kubeconfig}")
    for comp in s.components:
        state = "running" if comp.running else "NOT RUNNING"
        print(f"  {comp.name:<24} pid {comp.pid!s:<8} {state:<12} {comp.log}")
    if all(comp.running for comp in s.components):
        print(f"readyz:     {'ok' if s.ready else 'not ready'}; nodes Ready: {s.nodes_ready}")
    else:
        print("unhealthy:  a component is down; `up` restarts the cluster from scratch")
    return 0 if s.up and s.ready else 2


def cmd_env(args: argparse.Namespace) -> int:
    """Print shell exports: ``eval "$(python -m localcluster env)"``."""
    for key, value in _cluster(args).env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_gomod(_: argparse.Namespace) -> int:
    for path in gomod.generate(repo_root()):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="state directory (default: $LOCALCLUSTER_ROOT or <repo>/.cluster)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build (or find cached) pinned binaries")
    p.add_argument("--jobs", "-p", type=int, default=2, help="go build -p (default 2)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    _add_real_node_flag(
        p,
        "also kubelet, kube-proxy, kube-router, metrics-server and crictl (for "
        "`up --real-node`; default: $LOCALCLUSTER_REAL_NODE)",
    )
    p.set_defaults(func=cmd_build)

    sub.add_parser(
        "deps", help="apt-get install the Debian packages a real node needs (root)"
    ).set_defaults(func=cmd_deps)
    sub.add_parser(
        "images", help="build (or find cached) the real node's images: pause, base, server"
    ).set_defaults(func=cmd_images)

    p = sub.add_parser("up", help="start the local control plane (no-op if up)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for ready (default 180, 420 with --real-node)",
    )
    p.add_argument(
        "--no-build", action="store_true", help="fail instead of building missing binaries"
    )
    _add_real_node_flag(
        p,
        "a real node (containerd, kubelet, kube-proxy, kube-router, metrics-server) "
        "instead of KWOK; needs root (default: $LOCALCLUSTER_REAL_NODE)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the processes `up` started and remove the state")
    p.add_argument("--keep-logs", action="store_true", help="keep <root>/logs")
    p.set_defaults(func=cmd_down)

    sub.add_parser("status", help="show components; exit 0 up, 1 down, 2 unhealthy").set_defaults(
        func=cmd_status
    )
    sub.add_parser("env", help="print `export KUBECONFIG=... PATH=...`").set_defaults(func=cmd_env)
    sub.add_parser("gomod", help="regenerate hack/gomod/*/go.mod from versions.py").set_defaults(
        func=cmd_gomod
    )

    args = parser.parse_args(argv)
    args.no_build = getattr(args, "no_build", False)
    args.real_node = getattr(args, "real_node", False)
    try:
        rc: int = args.func(args)
    except (ClusterError, binaries.BuildError, FileNotFoundError, NodeError) as err:
        print(f"localcluster {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"localcluster {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
