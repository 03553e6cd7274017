"""Virtual environments for the peer servers, outside git and reused between runs.

Each peer gets `<cache>/bench-venvs/<name>-<version>`, where `<cache>` is
`$MODELDEPLOY_CACHE` or `$XDG_CACHE_HOME/modeldeploy` or `~/.cache/modeldeploy`.
The requirement list is written to a stamp file inside the environment; when it
changes (for example when the project moves to a new scikit-learn), the next run
installs the new list with pip. scikit-learn, joblib and numpy are pinned to the
versions of the benchmark's own interpreter, so every server unpickles the same
model files with the same library code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

STAMP = "bench-requirements.txt"


@dataclass(frozen=True)
class PeerEnv:
    name: str
    version: str
    requirements: tuple[str, ...]
    notes: str = ""

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"


def cache_root() -> Path:
    if env := os.environ.get("MODELDEPLOY_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "modeldeploy"


def _shared_pins() -> tuple[str, ...]:
    return tuple(f"{pkg}=={metadata.version(pkg)}" for pkg in ("scikit-learn", "joblib", "numpy"))


def peer_envs() -> dict[str, PeerEnv]:
    pins = _shared_pins()
    return {
        "kserve": PeerEnv(
            name="kserve",
            version="0.21.0",
            # kserve-storage is what sklearnserver resolves the model directory with.
            requirements=("kserve==0.21.0", "kserve-storage==0.21.0", *pins),
        ),
        "mlserver": PeerEnv(
            name="mlserver",
            version="1.7.1",
            # uvloop 0.22 changed event-loop creation and MLServer 1.7.1's inference
            # workers die at start with it ("There is no current event loop").
            requirements=("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", *pins),
            notes="uvloop pinned below 0.22 (MLServer 1.7.1 workers crash with 0.22+)",
        ),
    }


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure(peer: PeerEnv, log: Path) -> Path:
    """Create or update the peer's environment; returns its directory."""
    venv = cache_root() / "bench-venvs" / peer.dirname
    wanted = "\n".join(peer.requirements) + "\n"
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text() == wanted and python_of(venv).exists():
        return venv
    print(f"  preparing {venv} (first run or new requirements; pip output in {log})")
    if not python_of(venv).exists():
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run(
            [str(python_of(venv)), "-m", "pip", "install", "--quiet", *peer.requirements],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"pip install for {peer.dirname} failed; see {log}")
    stamp.write_text(wanted)
    return venv


def installed_versions(python: Path | str, packages: list[str]) -> dict[str, str]:
    """Versions of `packages` as the interpreter `python` sees them ('-' if absent)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[p] = '-'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return dict.fromkeys(packages, "?")
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def main(argv: list[str]) -> int:
    """Creates or updates the named peers' environments (`make kserve-client` prepares KServe's,
    whose client the server tests use)."""
    peers = peer_envs()
    unknown = [name for name in argv if name not in peers]
    if not argv or unknown:
        print(f"peers: {', '.join(peers)}", file=sys.stderr)
        return 2
    for name in argv:
        peer = peers[name]
        venv = ensure(peer, cache_root() / "bench-venvs" / f"pip-{peer.dirname}.log")
        print(f"{name}: {venv}")
    return 0
