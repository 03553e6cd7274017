"""The serving parent: prepares shared state, forks workers, restarts crashed ones, relays SIGTERM,
and answers the probes on their own port (see probes.py), whatever load the workers carry.

With several workers the parent imports the worker code (numpy, scikit-learn) once before forking,
so that workers start fast and share those pages. Forking is only safe while no native threads
exist, so BLAS and OpenMP pools are limited to one thread first (one thread per worker is also what
suits workers sharing the cores). A single worker imports that code itself, after the fork, and
keeps the libraries' own thread pools.

Workers die with the supervisor, however it dies (see `_die_with`), so none is left holding the
port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from modelserver.access import ratelimit
from modelserver.core import termination
from modelserver.process.options import ServeConfig
from modelserver.process.probes import HealthListener
from modelserver.process.readiness import Readiness

log = logging.getLogger("modelserver.supervisor")  # the name its log lines have always carried

# worker.run: (config, worker index, shared readiness, the pod's rate limiter) -> exit code
WorkerMain = Callable[[ServeConfig, int, Readiness, ratelimit.RateLimiter | None], int]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
# Read by the BLAS and OpenMP runtimes when numpy and scikit-learn are imported.
_THREAD_POOL_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_MAX_RESTARTS = 5  # within _RESTART_WINDOW seconds; more means the worker cannot run at all
_RESTART_WINDOW = 60.0
_POLL_SECONDS = 0.05  # how often signals are looked at while the health listener waits for probes
# After the workers' own drain delay and graceful timeout, how long before they are killed.
KILL_MARGIN_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1  # prctl option, from <linux/prctl.h>
# Worker exit codes that mean "this can never work": stop instead of restarting.
_FATAL_EXIT_CODES = {
    termination.EXIT_LOAD_FAILED: "the model could not be loaded",
    termination.EXIT_BIND_FAILED: "the port could not be bound",
}


def serve(config: ServeConfig) -> int:
    """Runs the server until SIGTERM; returns the process exit code."""
    metrics_dir = Path(config.process.metrics_dir) / str(os.getpid())
    try:
        _prepare_metrics_dir(metrics_dir)
    except OSError as error:
        reason = (
            f"cannot create the metrics directory {metrics_dir}: {error.strerror or error}; set "
            "METRICS_DIR to a writable directory (with a read-only root filesystem, mount an "
            "emptyDir at /tmp)"
        )
        log.error(reason)
        termination.write_reason(reason, config.process.termination_log)
        return 1
    # prometheus_client picks multiprocess mode when first imported, which happens below.
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    log.info(
        "starting",
        extra={
            "model": config.model.name,
            "port": config.http.port,
            "workers": config.process.workers,
        },
    )
    if config.process.workers > 1:
        for name in _THREAD_POOL_ENV:
            os.environ.setdefault(name, "1")
        _import_worker(config)
    try:
        return _Supervisor(config, metrics_dir, _run_worker).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _import_worker(config: ServeConfig) -> WorkerMain:
    """The worker code, imported with what loading the model format needs."""
    from modelserver.process import worker  # noqa: PLC0415 - after the environment is set, see above.
    from modelserver.runtimes import loader  # noqa: PLC0415 - after the environment is set, see above.

    loader.prepare(config.model.format)
    return worker.run


def _run_worker(
    config: ServeConfig, index: int, readiness: Readiness, limiter: ratelimit.RateLimiter | None
) -> int:
    return _import_worker(config)(config, index, readiness, limiter)


def shutdown_budget(config: ServeConfig) -> float:
    """Longest time from SIGTERM to exit: the drain delay, the graceful timeout of the requests in
    flight, then the margin after which workers still running are killed."""
    return (
        config.process.drain_delay_seconds
        + config.process.graceful_timeout_seconds
        + KILL_MARGIN_SECONDS
    )


def _port_in_use(host: str, port: int) -> str | None:
    """Why the port cannot be used, if it cannot. The workers share the port with SO_REUSEPORT,
    which would also let them join another server already on it; this check, made without
    SO_REUSEPORT, fails instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None


def _workers_metrics() -> tuple[bytes, bytes]:
    """Every worker's metrics, for the health port's /metrics (the supervisor counts nothing)."""
    # Imported here: prometheus_client must first be imported once PROMETHEUS_MULTIPROC_DIR is set.
    from modelserver.monitoring.metrics import render_directory  # noqa: PLC0415

    return render_directory()


def _die_with(parent: int) -> None:
    """Has the kernel SIGKILL this worker when `parent`, its supervisor, dies: even a SIGKILLed
    supervisor, which cannot stop its workers, leaves none behind (Linux's prctl; the server
    needs Linux anyway, for sigtimedwait). SIGKILL rather than SIGTERM: with the supervisor gone
    nothing answers the probes or would kill a worker whose drain hangs.

    The signal comes when the thread that forked the worker ends, so workers are forked on the
    supervisor's main thread only. If the supervisor died between the fork and prctl, no signal
    will come, but the worker has already been handed to another parent: it kills itself.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _prepare_metrics_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)


class _Supervisor:
    """Forks `config.process.workers` workers and keeps them running until told to stop."""

    def __init__(self, config: ServeConfig, metrics_dir: Path, run_worker: WorkerMain) -> None:
        self._config = config
        self._run_worker = run_worker
        self._metrics_dir = metrics_dir
        self._readiness = Readiness(config.process.workers)
        access = config.access
        # Shared by the workers (forked below): the limit is the pod's, whatever worker answers.
        self._limiter = (
            ratelimit.RateLimiter(access.rate_limit_rps, access.rate_limit_burst)
            if access.rate_limit_rps > 0
            else None
        )
        self._children: dict[int, int] = {}  # pid -> worker index
        self._restarts: list[float] = []
        self._stopping = False
        self._exit_code = 0
        self._health: HealthListener | None = None

    def run(self) -> int:
        config = self._config
        host, health_port = config.http.host, config.process.health_port
        reason = _port_in_use(host, config.http.port)
        if reason is None and health_port:
            try:
                self._health = HealthListener(
                    host, health_port, self._readiness, metrics=_workers_metrics
                )
            except OSError as error:
                reason = f"cannot listen on {host}:{health_port} (health port): " + (
                    error.strerror or str(error)
                )
        if reason is not None:
            log.error(reason)
            termination.write_reason(reason, config.process.termination_log)
            return 1
        try:
            return self._supervise()
        finally:
            if self._health is not None:
                self._health.close()

    def _supervise(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        for index in range(self._config.process.workers):
            self._spawn(index)
        deadline = float("inf")
        while self._children:
            if self._health is None:
                received = signal.sigtimedwait(_HANDLED, 0.5)
            else:
                self._health.serve(_POLL_SECONDS)
                received = signal.sigtimedwait(_HANDLED, 0)
            if received is not None and received.si_signo in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    deadline = time.monotonic() + self._grace()
                self._stop(received.si_signo)
            self._reap()
            if self._stopping and time.monotonic() > deadline:
                log.error("workers did not stop within the grace period; killing them")
                self._signal_all(signal.SIGKILL)
                deadline = float("inf")
        log.info("stopped", extra={"exit_code": self._exit_code})
        return self._exit_code

    def _grace(self) -> float:
        return shutdown_budget(self._config)

    def _spawn(self, index: int) -> None:
        self._readiness.mark_unloaded(index)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with(parent)
                if self._health is not None:
                    self._health.close()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
                code = self._run_worker(self._config, index, self._readiness, self._limiter)
            except BaseException:
                log.exception("worker crashed", extra={"worker": index})
            finally:
                logging.shutdown()
                os._exit(code)
        self._children[pid] = index

    def _stop(self, signum: int) -> None:
        self._stopping = True
        self._readiness.start_draining()
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            index = self._children.pop(pid, None)
            if index is None:
                continue
            self._forget_metrics(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                continue
            self._worker_died(index, code)

    def _worker_died(self, index: int, code: int) -> None:
        if code in _FATAL_EXIT_CODES:
            log.error("stopping: %s", _FATAL_EXIT_CODES[code], extra={"worker": index})
            self._exit_code = 1
            self._stop(signal.SIGTERM)
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < _RESTART_WINDOW]
        if len(self._restarts) >= _MAX_RESTARTS:
            log.error("workers keep crashing; stopping", extra={"worker": index, "code": code})
            self._exit_code = 1
            self._stop(signal.SIGTERM)
            return
        self._restarts.append(now)
        log.warning("worker exited unexpectedly; restarting", extra={"worker": index, "code": code})
        self._spawn(index)

    def _forget_metrics(self, pid: int) -> None:
        """Drops a dead worker's live gauges, as prometheus_client's mark_process_dead does."""
        for path in self._metrics_dir.glob(f"gauge_live*_{pid}.db"):
            path.unlink(missing_ok=True)
