"""OCI image archives written by hand: one layer, a config, a manifest, an index.

What ``ctr images import`` and buildah read; deterministic (sorted entries, zero times and
owners), so the same layer gives the same archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(
    dest: Path, name: str, layer_tar: Path, image_config: Mapping[str, Any], created: str
) -> None:
    """Write a one-layer image as an OCI archive that ``ctr images import`` and buildah read.

    ``io.containerd.image.name`` carries the full name, so containerd needs no --base-name.
    """
    with tempfile.TemporaryDirectory(prefix=".oci-", dir=dest.parent) as tmp:
        layout = Path(tmp) / "layout"
        (layout / "blobs" / "sha256").mkdir(parents=True)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        diff_id = sha256_file(layer_tar)
        shutil.copyfile(layer_tar, layout / "blobs" / "sha256" / diff_id)
        layer = {
            "mediaType": _OCI_LAYER,
            "digest": f"sha256:{diff_id}",
            "size": layer_tar.stat().st_size,
        }
        config = {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": dict(image_config),
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": created, "created_by": "localcluster.images"}],
        }
        config_desc = {
            "mediaType": _OCI_CONFIG,
            **_blob(layout, json.dumps(config, sort_keys=True).encode()),
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer],
        }
        manifest_desc = {
            "mediaType": _OCI_MANIFEST,
            **_blob(layout, json.dumps(manifest, sort_keys=True).encode()),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
            },
        }
        index = {"schemaVersion": 2, "manifests": [manifest_desc]}
        (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
        tmp_dest = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        with tarfile.open(tmp_dest, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(layout.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(layout).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        tmp_dest.replace(dest)
