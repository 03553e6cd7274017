"""Container images for the real node, made on this machine without any registry.

No registry is reachable here, so every image a pod runs is built locally and imported into
containerd's ``k8s.io`` namespace:

- ``pause``: the pod sandbox, a tiny static C program (``hack/images/pause/pause.c``).
- ``base``: Debian bookworm with python3.11 from Debian's packages (debootstrap), standing in
  for ``python:3.11-slim-bookworm`` as the ``PYTHON_IMAGE`` build argument of
  ``server_image/Dockerfile``.
- ``server``: the model server, built by buildah from that unchanged Dockerfile.
- ``operator``: the operator, built the same way from ``operator/Dockerfile`` (its context is
  only the files that Dockerfile copies from the repository).

Each result is an OCI archive in ``${XDG_CACHE_HOME:-~/.cache}/modeldeploy/images/``, named by a
hash of everything that went into it (sources, package list, base image), so a second run
rebuilds nothing and a changed Dockerfile or server source rebuilds only the server image.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster import mounts, oci
from localcluster.binaries import BuildError, cache_root

Log = Callable[[str], None]

IMAGES_SRC = Path(__file__).resolve().parent.parent / "images"
REPO = Path(__file__).resolve().parents[2]

PAUSE_IMAGE = "localhost/localcluster/pause:1.0"
BASE_IMAGE = "localhost/modeldeploy/python:3.11-bookworm"
#: The operator's default (``modeldeploy.settings.DEFAULT_SERVER_IMAGE``), as containerd
#: spells it after normalising ``modeldeploy/modelserver:0.1.0``.
SERVER_IMAGE = "docker.io/modeldeploy/modelserver:0.1.0"
#: ``manifests/base/operator.yaml``'s ``modeldeploy/operator:0.1.0`` as containerd spells it.
OPERATOR_IMAGE = "docker.io/modeldeploy/operator:0.1.0"
#: What ``operator/Dockerfile`` copies from the repository: its whole build context.
OPERATOR_CONTEXT = (
    "pyproject.toml",
    "README.md",
    "operator/Dockerfile",
    "operator/modeldeploy",
    "server_image/modelserver",
    "hack/localcluster",
)

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("LOCALCLUSTER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: What the Dockerfile needs from its base: ``python`` on PATH, ``python -m venv`` with pip,
#: CA certificates for ``pip install``.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
#: Left out of the base layer: caches, docs and what the runtime mounts anyway.
_BASE_EXCLUDES = (
    "./dev/*",
    "./proc/*",
    "./sys/*",
    "./run/*",
    "./tmp/*",
    "./var/cache/apt/*",
    "./var/lib/apt/lists/*",
    "./var/log/*",
    "./usr/share/doc/*",
    "./usr/share/man/*",
    "./usr/share/info/*",
    "./usr/share/locale/*",
    "./debootstrap",
)
#: Bump when the recipe below changes in a way the hashed inputs do not show.
_RECIPE = "1"


@dataclass(frozen=True)
class Image:
    """A built image: the name containerd will know it by and its OCI archive in the cache."""

    name: str
    archive: Path
    key: str


def images_cache() -> Path:
    return cache_root().parent / "images"


def _run(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> None:
    """Run a build step with a deadline; on failure raise BuildError with its output's tail."""
    out = log_path.open("ab") if log_path else None
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out if out else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise BuildError(f"{what}: timed out after {timeout:.0f}s") from err
    finally:
        if out:
            out.close()
    if proc.returncode != 0:
        if log_path:
            tail = log_path.read_bytes()[-4000:].decode(errors="replace")
        else:
            tail = (proc.stdout or b"")[-4000:].decode(errors="replace")
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _ignored(rel: str, patterns: Sequence[str]) -> bool:
    """A .dockerignore match, for the patterns build contexts use (``**/x``, globs, dirs)."""
    for pattern in patterns:
        if pattern.startswith("**/"):
            parts = rel.split("/")
            tails = ["/".join(parts[i:]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails):
                return True
        elif fnmatch.fnmatchcase(rel, pattern.rstrip("/")) or rel.startswith(
            pattern.rstrip("/") + "/"
        ):
            return True
    return False


def hash_tree(root: Path) -> str:
    """Content hash of a build context: relative paths, modes and bytes of what it sends.

    Files the context's ``.dockerignore`` leaves out (caches, local model files) do not
    count, so they never cause a rebuild.
    """
    h = hashlib.sha256()
    ignore_file = root / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.is_file() else [])
        if line.strip() and not line.startswith("#") and not line.startswith("!")
    ]
    patterns += ["**/__pycache__", "**/*.pyc"]
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not _ignored((base / d).as_posix(), patterns))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if _ignored(rel, patterns):
                continue
            h.update(f"{rel}\0{path.stat().st_mode & 0o111:o}\0".encode())
            h.update(oci.sha256_file(path).encode())
    return h.hexdigest()


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join((_RECIPE, *parts)).encode()).hexdigest()


def _tool_version(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "missing"


def _need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise BuildError(f"`{tool}` is not installed: apt-get install -y {package}")
    return found


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    """A scratch folder in the cache (same filesystem as the results, for atomic renames)."""
    images_cache().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=images_cache()))
    try:
        yield tmp
    finally:
        mounts.unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _layer_from_dir(rootfs: Path, dest: Path, excludes: Sequence[str] = ()) -> None:
    """A layer tar of a directory tree, sorted and with numeric owners (GNU tar)."""
    argv = ["tar", "--sort=name", "--numeric-owner", "--xattrs", "-C", str(rootfs)]
    argv += [f"--exclude={pattern}" for pattern in excludes]
    argv += ["-cf", str(dest), "."]
    _run(argv, what=f"tar {rootfs}", timeout=600)


def _cached(kind: str, name: str, key: str, *, build: bool) -> Image:
    """The image at its place in the cache, built or not.

    With ``build`` off, a missing archive is a FileNotFoundError that says how to build it.
    """
    image = Image(name, images_cache() / f"{kind}-{key[:16]}.oci.tar", key)
    if not build and not image.archive.is_file():
        raise FileNotFoundError(
            f"the {kind} image is not built ({image.archive} is missing): "
            "run `python -m localcluster images` or `up --real-node` without --no-build"
        )
    return image


def _prune(kind: str, keep: int = 3) -> None:
    """Drop all but the newest ``keep`` archives of a kind: each server change adds one.

    Not just the newest: a cluster that is up may still point at the previous one.
    """
    archives = sorted(
        images_cache().glob(f"{kind}-*.oci.tar"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in archives[keep:]:
        old.unlink(missing_ok=True)


# -- pause -----------------------------------------------------------------------------------


def pause_image(log: Log, *, build: bool = True) -> Image:
    """The sandbox image: one statically linked binary, nothing else."""
    source = IMAGES_SRC / "pause" / "pause.c"
    gcc = _need("gcc", "gcc libc6-dev")
    key = _key("pause", oci.sha256_file(source), _tool_version([gcc, "--version"]), PAUSE_IMAGE)
    image = _cached("pause", PAUSE_IMAGE, key, build=build)
    if image.archive.is_file():
        return image
    log(f"building the pause image {PAUSE_IMAGE} (gcc -static)")
    with _workdir("pause") as tmp:
        rootfs = tmp / "rootfs"
        rootfs.mkdir()
        _run(
            [gcc, "-static", "-Os", "-s", "-o", str(rootfs / "pause"), str(source)],
            what="gcc pause.c",
            timeout=120,
        )
        layer = tmp / "layer.tar"
        _layer_from_dir(rootfs, layer)
        oci.write_archive(
            image.archive,
            PAUSE_IMAGE,
            layer,
            {"Entrypoint": ["/pause"], "User": "65535:65535"},
            created="1970-01-01T00:00:00Z",
        )
    return image


# -- base ------------------------------------------------------------------------------------


def base_image(log: Log, *, build: bool = True) -> Image:
    """Debian bookworm minbase + python3.11 (debootstrap), as an OCI archive."""
    debootstrap = _need("debootstrap", "debootstrap")
    key = _key(
        "base", DEBIAN_SUITE, DEBIAN_MIRROR, ",".join(BASE_PACKAGES), *_BASE_EXCLUDES, BASE_IMAGE
    )
    image = _cached("base", BASE_IMAGE, key, build=build)
    if image.archive.is_file():
        return image
    log(f"building the base image {BASE_IMAGE} (debootstrap {DEBIAN_SUITE}, a few minutes)")
    t0 = time.monotonic()
    with _workdir("base") as tmp:
        rootfs = tmp / "rootfs"
        log_path = images_cache() / "base-build.log"
        log_path.write_text("")
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "--components=main",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            what=f"debootstrap (log: {log_path})",
            timeout=1200,
            log_path=log_path,
        )
        mounts.unmount_under(rootfs)
        (rootfs / "etc" / "apt" / "sources.list").write_text(
            f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n"
        )
        layer = tmp / "layer.tar"
        _layer_from_dir(rootfs, layer, _BASE_EXCLUDES)
        oci.write_archive(
            image.archive,
            BASE_IMAGE,
            layer,
            {
                "Env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG=C.UTF-8",
                ],
                "Cmd": ["python3"],
            },
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
    log(f"  base image built in {time.monotonic() - t0:.0f}s -> {image.archive}")
    return image


# -- server ----------------------------------------------------------------------------------


def _pip_mounts(tmp: Path) -> list[str]:
    """Build-time only: hand the host's pip settings (index, CA bundle) to ``pip install``.

    Behind a TLS-inspecting proxy pip needs the host's CA bundle; the image's own Debian
    bundle does not have it. These are bind mounts of RUN steps, never part of the image.
    """
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    lines = ["[global]"]
    mounts: list[str] = []
    if cert and Path(cert).is_file():
        mounts.append(f"{cert}:/run/localcluster-ca.crt:ro")
        lines.append("cert = /run/localcluster-ca.crt")
    for env, key in (
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_TRUSTED_HOST", "trusted-host"),
        ("PIP_DEFAULT_TIMEOUT", "timeout"),
    ):
        if os.environ.get(env):
            lines.append(f"{key} = {os.environ[env]}")
    conf = tmp / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    mounts.append(f"{conf}:/etc/pip.conf:ro")
    return mounts


def _dockerfile_image(
    log: Log, kind: str, *, name: str, context: Path, dockerfile: Path, base: Image, build: bool
) -> Image:
    """A Dockerfile built by buildah on the local base image (``PYTHON_IMAGE``).

    Throwaway vfs storage per build (no daemon, no state to clean), chroot isolation (no
    user namespaces or cgroups needed), host network for ``pip install`` from PyPI.
    """
    if not dockerfile.is_file():
        raise BuildError(f"{dockerfile} does not exist yet")
    buildah = _need("buildah", "buildah")
    key = _key(kind, hash_tree(context), base.key, _tool_version([buildah, "--version"]))
    image = _cached(kind, name, key, build=build)
    if image.archive.is_file():
        return image
    log(f"building the {kind} image {name} from {dockerfile} (buildah, a few minutes)")
    t0 = time.monotonic()
    log_path = images_cache() / f"{kind}-build.log"
    log_path.write_text("")
    with _workdir(kind) as tmp:
        store = [
            f"--root={tmp / 'storage'}",
            f"--runroot={tmp / 'run'}",
            "--storage-driver=vfs",
        ]
        env = dict(os.environ, BUILDAH_ISOLATION="chroot", TMPDIR=str(tmp))
        env.pop("BUILDAH_LAYERS", None)
        argv = [
            buildah,
            *store,
            "bud",
            "--isolation=chroot",
            "--network=host",
            "--pull=never",
            f"--build-arg=PYTHON_IMAGE=oci-archive:{base.archive}",
            "--format=oci",
            f"--tag={name}",
            f"--file={dockerfile}",
        ]
        argv += [f"--volume={m}" for m in _pip_mounts(tmp)]
        argv.append(str(context))
        _run(argv, what=f"buildah bud (log: {log_path})", timeout=1800, env=env, log_path=log_path)
        tmp_archive = image.archive.with_name(f".{image.archive.name}.tmp{os.getpid()}")
        _run(
            [buildah, *store, "push", name, f"oci-archive:{tmp_archive}:{name}"],
            what=f"buildah push (log: {log_path})",
            timeout=600,
            env=env,
            log_path=log_path,
        )
        tmp_archive.replace(image.archive)
    _prune(kind)
    log(f"  {kind} image built in {time.monotonic() - t0:.0f}s -> {image.archive}")
    return image


def server_image(
    log: Log, base: Image, context: Path | None = None, *, build: bool = True
) -> Image:
    """``server_image/Dockerfile``, its folder as the context."""
    context = context or REPO / "server_image"
    return _dockerfile_image(
        log,
        "server",
        name=SERVER_IMAGE,
        context=context,
        dockerfile=context / "Dockerfile",
        base=base,
        build=build,
    )


def operator_image(log: Log, base: Image, *, build: bool = True) -> Image:
    """``operator/Dockerfile`` with a context of only what it copies (not .venv, .git, ...)."""
    with tempfile.TemporaryDirectory(prefix="operator-context-") as tmp:
        context = Path(tmp)
        for rel in OPERATOR_CONTEXT:
            source, target = REPO / rel, context / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(
                    source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(source, target)
        return _dockerfile_image(
            log,
            "operator",
            name=OPERATOR_IMAGE,
            context=context,
            dockerfile=context / "operator" / "Dockerfile",
            base=base,
            build=build,
        )


def build_all(log: Log, *, server: bool = True, build: bool = True) -> list[Image]:
    """Pause, base, and the server and operator images; cached by content."""
    images = [pause_image(log, build=build)]
    base = base_image(log, build=build)
    images.append(base)
    if server:
        images.append(server_image(log, base, build=build))
        images.append(operator_image(log, base, build=build))
    return images


def require(*, server: bool = True) -> list[Image]:
    """The cached images, never building: FileNotFoundError says how to build them."""
    return build_all(print, server=server, build=False)


def import_images(ctr: str, address: Path, images: Sequence[Image], log: Log) -> None:
    """Load archives into containerd's ``k8s.io`` namespace (the CRI's), unpacked."""
    for image in images:
        t0 = time.monotonic()
        _run(
            [ctr, f"--address={address}", "-n", "k8s.io", "images", "import", str(image.archive)],
            what=f"ctr images import {image.archive}",
            timeout=600,
        )
        log(f"  imported {image.name} ({time.monotonic() - t0:.1f}s)")
