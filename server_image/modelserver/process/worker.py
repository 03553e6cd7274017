"""One server process: listens, loads the model while answering probes, serves, drains on SIGTERM.

Every worker opens its own listening socket with SO_REUSEPORT, so the kernel spreads connections
over the workers without a proxy process. The model is loaded in a thread so that liveness and
readiness (503) answer during a long load (the probes' own port, in the supervisor, answers too).
A worker that restarts while another one serves starts listening only once its model is loaded, so
that the kernel never hands it requests it would refuse.

On SIGTERM readiness turns 503 and every answer says `Connection: close`; requests arriving on
open connections are still served. After the drain delay the listener closes, and the worker exits
once its connections have closed (idle ones after a second) or the graceful timeout has passed.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import warnings
from collections.abc import Callable

import threadpoolctl  # type: ignore[import-untyped]

from modelserver.access import auth, gate, kubeapi, ratelimit, tls
from modelserver.core import termination
from modelserver.core.errors import ModelLoadError
from modelserver.http.server import HttpServer, Router
from modelserver.monitoring import drift, payloadlog
from modelserver.monitoring.metrics import FLUSH_INTERVAL_SECONDS, Metrics
from modelserver.process.options import ServeConfig
from modelserver.process.readiness import Readiness
from modelserver.runtimes import loader, runtime
from modelserver.serving.admission import Admission
from modelserver.serving.dataplane import DataPlane

log = logging.getLogger("modelserver.worker")  # the name its log lines have always carried

EXIT_OK = 0
EXIT_LOAD_FAILED = termination.EXIT_LOAD_FAILED
EXIT_BIND_FAILED = termination.EXIT_BIND_FAILED


def listening_socket(host: str, port: int, *, shared: bool) -> socket.socket:
    """A non-blocking socket bound to the port; `shared` lets the other workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def run(
    config: ServeConfig,
    index: int,
    readiness: Readiness,
    limiter: ratelimit.RateLimiter | None = None,
) -> int:
    """Runs one worker until it has drained; returns the process exit code."""
    # Models fitted on DataFrames warn on every array input; the server always sends arrays.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    _tune_allocator()
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, the standard loop works too.
    except ImportError:
        return asyncio.run(_serve(config, index, readiness, limiter))
    return uvloop.run(_serve(config, index, readiness, limiter))


# glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 1024 * 1024


def _tune_allocator() -> None:
    """Lets memory of large requests go back to the system once they are answered.

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB),
    so after one big request the buffers of the next ones come from the heap and stay there; and
    each thread gets an arena of its own that keeps what it freed. A fixed threshold and two
    arenas keep the resident memory near what is in use (measured: 41 -> 18 MiB held per client
    that does not read an 8 MiB request's answer). Nothing happens without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_ARENA_MAX, 2)


def _build(
    config: ServeConfig,
    loop: asyncio.AbstractEventLoop,
    readiness: Readiness,
    limiter: ratelimit.RateLimiter | None,
) -> tuple[Metrics, DataPlane, HttpServer]:
    """The worker's parts, each knowing only the ones below it: HTTP -> data plane -> metrics."""
    metrics = Metrics(config.model.name)
    admission = Admission(config.admission.max_inflight_bytes, config.admission.max_inflight_rows)
    plane = DataPlane(
        loop,
        metrics,
        model_name=config.model.name,
        model_version=config.model.version,
        max_batch_size=config.batching.max_batch_size,
        max_batch_wait_seconds=config.batching.max_batch_wait_ms / 1000,
        max_queue_depth=config.batching.max_queue_depth,
        is_ready=lambda: readiness.ready,
        admission=admission,
        drift_settings=drift.WindowSettings(
            seconds=config.monitoring.drift_window_seconds,
            min_rows=config.monitoring.drift_min_rows,
            max_features=config.monitoring.drift_max_features,
        ),
    )
    http = HttpServer(
        loop,
        Router(plane, _gate(config, loop, plane, metrics, limiter)),
        max_body_bytes=config.http.max_body_bytes,
        keepalive_timeout=config.http.keepalive_timeout_seconds,
        write_timeout=config.http.write_timeout_seconds,
        log_requests=config.http.access_log,
        admission=admission,
    )
    return metrics, plane, http


def _gate(
    config: ServeConfig,
    loop: asyncio.AbstractEventLoop,
    plane: DataPlane,
    metrics: Metrics,
    limiter: ratelimit.RateLimiter | None,
) -> gate.Gate | None:
    """The rate limit and the token check, when configured (cli.preflight checked the API)."""
    settings = config.access
    authorizer = None
    if settings.auth == "kubernetes":
        namespace = settings.auth_namespace or kubeapi.in_cluster_namespace() or ""
        attributes = kubeapi.ResourceAttributes(
            namespace=namespace, name=settings.auth_name or config.model.name
        )
        reviewer = auth.Reviewer(kubeapi.discover(os.environ), attributes)
        authorizer = auth.Authorizer(
            loop,
            reviewer,
            allow_ttl=settings.auth_allow_ttl_seconds,
            deny_ttl=settings.auth_deny_ttl_seconds,
            max_entries=settings.auth_cache_size,
            observe=metrics.observe_review,
        )
    if limiter is None and authorizer is None:
        return None
    return gate.Gate(plane, limiter=limiter, authorizer=authorizer)


def _certificate(
    config: ServeConfig, loop: asyncio.AbstractEventLoop
) -> tls.ReloadingCertificate | None:
    """The HTTPS certificate, checked for a newer one every few seconds while the worker runs."""
    settings = config.access
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    certificate = tls.ReloadingCertificate(settings.tls_cert_file, settings.tls_key_file)
    _Every(loop, tls.CHECK_INTERVAL_SECONDS, certificate.check)
    return certificate


async def _serve(
    config: ServeConfig, index: int, readiness: Readiness, limiter: ratelimit.RateLimiter | None
) -> int:
    loop = asyncio.get_running_loop()
    metrics, plane, http = _build(config, loop, readiness, limiter)
    certificate = _certificate(config, loop)
    try:
        sock = listening_socket(
            config.http.host, config.http.port, shared=config.process.workers > 1
        )
    except OSError as error:
        reason = (
            f"cannot listen on {config.http.host}:{config.http.port}: {error.strerror or error}"
        )
        log.error(reason)
        termination.write_reason(reason, config.process.termination_log)
        return EXIT_BIND_FAILED
    # Nothing serves yet (the server starts): listen at once, answering probes while loading.
    listen_first = not readiness.ready
    server = await loop.create_server(
        http.new_connection,
        sock=sock,
        backlog=2048,
        start_serving=listen_first,
        ssl=None if certificate is None else certificate.context,
        # A client that opens a connection and never finishes its handshake is dropped soon.
        ssl_handshake_timeout=None if certificate is None else tls.HANDSHAKE_TIMEOUT_SECONDS,
    )
    if listen_first:
        readiness.mark_listening(index)
    flushing = _Every(loop, FLUSH_INTERVAL_SECONDS, metrics.flush)

    stop = asyncio.Event()
    drain_delay = config.process.drain_delay_seconds

    def request_stop(delay: float) -> None:
        nonlocal drain_delay
        readiness.start_draining()
        http.start_draining()
        drain_delay = min(drain_delay, delay)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, request_stop, config.process.drain_delay_seconds)
    loop.add_signal_handler(signal.SIGINT, request_stop, 0.0)

    loading = loop.run_in_executor(None, _load, config)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        try:
            model, reference, redact = loading.result()
        except Exception as error:
            _report_load_failure(config, error)
            server.close()
            stopping.cancel()
            flushing.cancel()
            return EXIT_LOAD_FAILED
        plane.set_runtime(model, reference, _payload_logger(config, metrics, redact))
        _settle(config.process.workers)
        await server.start_serving()
        readiness.mark_loaded(index)
        _log_loaded(config.model.name, index, model.info)
    await stopping

    clean = await _drain(server, http, drain_delay, config.process.graceful_timeout_seconds, index)
    await plane.stop_payload_log()
    flushing.cancel()
    metrics.flush()
    if not loading.done():
        log.info("stopped before the model was loaded", extra={"worker": index})
    log.info("stopped", extra={"worker": index, "clean": clean})
    return EXIT_OK


def _report_load_failure(config: ServeConfig, error: Exception) -> None:
    """Logs why the model could not be loaded and leaves it as the termination message."""
    detail = str(error) if isinstance(error, ModelLoadError | drift.ProfileError) else repr(error)
    reason = f"model load failed: {detail}"
    log.error(reason, extra={"model": config.model.name, "uri": config.model.uri})
    termination.write_reason(reason, config.process.termination_log)


def _load(
    config: ServeConfig,
) -> tuple[runtime.SklearnRuntime, drift.Profile | None, list[int]]:
    """The model, the reference profile that fits it (when configured) and the columns the
    payload log redacts."""
    model = loader.load(
        config.model.uri, config.model.format, config.model.digest, config.model.trusted_types
    )
    reference = None
    info = model.info
    names_in = getattr(model.estimator, "feature_names_in_", None)
    names = None if names_in is None else [str(name) for name in names_in]
    if config.monitoring.reference_uri is not None:
        reference = drift.read_profile(
            config.monitoring.reference_uri, config.monitoring.reference_digest
        )
        drift.check_fits(reference, info.n_features, info.classes if info.is_classifier else None)
        names = [feature.name for feature in reference.features]
    try:
        redact = payloadlog.redacted_indices(config.monitoring.payload_log_redact, names)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    return model, reference, redact


def _payload_logger(
    config: ServeConfig, metrics: Metrics, redact: list[int]
) -> payloadlog.PayloadLogger | None:
    """The started payload log, when a sink is configured."""
    if config.monitoring.payload_log_url is None:
        return None
    payload_log = payloadlog.PayloadLogger(
        metrics.registry,
        model=config.model.name,
        version=config.model.version,
        url=config.monitoring.payload_log_url,
        sample_rate=config.monitoring.payload_log_sample_rate,
        redact=redact,
        max_queue=config.monitoring.payload_log_max_queue,
    )
    payload_log.start()
    metrics.also_flush(payload_log.flush)
    return payload_log


async def _drain(
    server: asyncio.AbstractServer, http: HttpServer, delay: float, timeout: float, index: int
) -> bool:
    """Keeps accepting for the drain delay, then waits for the connections to close; True if they
    all did within `timeout`."""
    log.info("draining", extra={"worker": index, "delay_seconds": delay})
    if delay > 0:
        await asyncio.sleep(delay)
    server.close()
    return await http.wait_closed(timeout)


def _log_loaded(name: str, index: int, info: runtime.ModelInfo) -> None:
    log.info(
        "model loaded",
        extra={
            "model": name,
            "model_class": info.model_class,
            "n_features_in": info.n_features,
            "load_seconds": round(info.load_seconds, 4),
            "fast_path": info.fast_path,
            "sha256": info.sha256,
            "worker": index,
        },
    )


class _Every:
    """Calls `action` every `seconds` on the loop until cancelled."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, action: Callable[[], object]
    ) -> None:
        self._loop = loop
        self._seconds = seconds
        self._action = action
        self._handle = loop.call_later(seconds, self._run)

    def _run(self) -> None:
        try:
            self._action()
        finally:
            self._handle = self._loop.call_later(self._seconds, self._run)

    def cancel(self) -> None:
        self._handle.cancel()


def _settle(workers: int) -> None:
    """After loading: one BLAS thread per worker when workers share the cores, and the model moved
    out of the garbage collector's way (it lives as long as the process)."""
    if workers > 1:
        threadpoolctl.threadpool_limits(limits=1)
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()
