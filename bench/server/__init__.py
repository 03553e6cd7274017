"""The model server benchmark: ours against KServe's sklearn server and Seldon MLServer.

`run(argv)` is the entry point; `python -m bench server --help` lists the options.
"""

from bench.server.runner import main, run

__all__ = ["main", "run"]
