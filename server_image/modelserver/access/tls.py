"""HTTPS with a certificate that is reloaded when its files change, without a restart.

A mounted Secret changes by a symlink swap (both files at once); other tools may write the
certificate and the key one after the other. So a change is loaded into a fresh SSLContext, and
only a pair that loads (a certificate matching its key) replaces the one in use; a half-written
pair is retried at the next check. The listening socket keeps one context whose server-name
callback, run at the start of each handshake (with or without SNI), hands the connection the
current context: new connections get the new certificate, open ones keep theirs, none fails.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

log = logging.getLogger("modelserver.tls")  # the name its log lines have always carried

CHECK_INTERVAL_SECONDS = 5.0
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class TlsConfigError(Exception):
    """The certificate or key cannot be used."""


def load_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with the pair loaded; TlsConfigError says why one cannot be made."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(
            f"cannot use the TLS certificate {cert_file} with the key {key_file}: {error}"
        ) from None
    return context


def _signature(path: str) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten (stat follows the Secret's symlinks)."""
    stat = Path(path).stat()
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


class ReloadingCertificate:
    """The listener's SSL context, and a `check()` to call periodically on the event loop."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._signatures = self._read_signatures()
        self._current = load_context(cert_file, key_file)
        self.context = load_context(cert_file, key_file)
        self.context.sni_callback = self._choose
        self.reloads = 0

    def _read_signatures(self) -> tuple[tuple[int, int, int, int], ...] | None:
        try:
            return (_signature(self._cert_file), _signature(self._key_file))
        except OSError:
            return None

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        connection.context = self._current

    def check(self) -> bool:
        """Loads the files again if they changed; True when a new certificate is in use."""
        signatures = self._read_signatures()
        if signatures is None or signatures == self._signatures:
            return False
        try:
            context = load_context(self._cert_file, self._key_file)
        except TlsConfigError as error:
            log.warning("keeping the current certificate: %s", error)
            return False
        self._signatures = signatures
        self._current = context
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"cert_file": self._cert_file})
        return True
