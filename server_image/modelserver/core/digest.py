"""sha256 digests in the `sha256:<64 hex>` form used by the ModelDeployment spec."""

from __future__ import annotations

import hashlib
import re

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def parse(digest: str) -> str:
    """The 64 hex characters of a digest; ValueError when it is not `sha256:<64 lowercase hex>`."""
    match = _DIGEST.fullmatch(digest.strip().lower())
    if match is None:
        raise ValueError(f"digest {digest!r} is not of the form sha256:<64 hex characters>")
    return match.group(1)


def of_bytes(data: bytes) -> str:
    """The digest of some bytes, in the `sha256:<hex>` form."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def mismatch_message(what: str, expected_hex: str, actual_hex: str) -> str:
    """The reason shown when the bytes are not the ones the user pinned."""
    return (
        f"digest mismatch for {what}: expected sha256:{expected_hex}, got sha256:{actual_hex}; "
        "the model was not loaded"
    )
