"""`python -m bench [server|operator|access|all] [--quick] [--only server|operator] [options]`.

`access` (bench/server/access.py) measures auth and TLS on our server; `all` leaves it out.

With no word (or `all`) it runs the model server benchmark and then, if the
module `bench.operator_bench` exists, the operator benchmark. `--quick` makes
every run short. Further options go to the benchmark that is run
(`python -m bench server --help` lists the server benchmark's).

The operator benchmark is optional: `bench/operator_bench.py` is expected to
offer `main(argv: list[str]) -> int`; it receives `--quick` when given.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

WHAT = ("server", "operator", "access", "all")
USAGE = __doc__ or ""


def _operator_main() -> Callable[[list[str]], Any] | None:
    try:
        module = importlib.import_module("bench.operator_bench")
    except ModuleNotFoundError as exc:
        if exc.name in ("bench.operator_bench",):
            return None
        raise
    entry = getattr(module, "main", None)
    return entry if callable(entry) else None


def _split(argv: list[str]) -> tuple[str, str | None, list[str]]:
    args = list(argv)
    what = "all"
    if args and args[0] in WHAT:
        what = args.pop(0)
    only: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--only" and i + 1 < len(args):
            only = args[i + 1]
            i += 2
            continue
        if arg.startswith("--only="):
            only = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if only is not None and only not in WHAT:
        raise SystemExit(f"--only takes one of {', '.join(WHAT)}, not {only!r}")
    return what, only, rest


def main(argv: list[str] | None = None) -> int:
    what, only, rest = _split(sys.argv[1:] if argv is None else argv)
    if what == "all" and only is not None:
        what = only
    if what == "all" and rest and rest[0] in ("-h", "--help"):
        print(USAGE)
        return 0

    status = 0
    if what == "access":  # not part of `all`: it starts a local control plane
        return int(importlib.import_module("bench.server.access").run(rest) or 0)
    if what in ("server", "all"):
        server_bench = importlib.import_module("bench.server")
        status = int(server_bench.run(rest) or 0) or status
    if what in ("operator", "all"):
        entry = _operator_main()
        if entry is None:
            if what == "operator":
                print("the operator benchmark (bench/operator_bench.py) is not there yet")
                return 2
        else:
            operator_args = ["--quick"] if "--quick" in rest else []
            if what == "operator":
                operator_args = rest
            status = int(entry(operator_args) or 0) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
