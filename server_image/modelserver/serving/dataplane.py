"""The data plane: what each endpoint does, independent of HTTP.

The HTTP layer parses requests and calls one method here per route; every method answers through a
`Respond` callback with a `Reply` (status, body, content type, extra headers), at once for errors
and metadata, or after the batcher ran the model for inference.

Inference requests are checked completely before they join a batch (so that one bad request cannot
fail its neighbours' predict call), counted against the worker's rows in flight, and dropped unrun
when their client has gone. Large bodies are decoded in a thread, so that the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from modelserver import __version__
from modelserver.core.errors import (
    BadRequestError,
    InternalError,
    NotFoundError,
    RequestError,
    UnavailableError,
)
from modelserver.monitoring import drift, payloadlog, predictions
from modelserver.monitoring.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelserver.monitoring.metrics import Metrics
from modelserver.protocols import codec, v1, v2
from modelserver.runtimes import batching, runtime
from modelserver.serving.admission import Admission

log = logging.getLogger("modelserver.dataplane")  # the name its log lines have always carried

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"


class Reply(NamedTuple):
    """An answer for the HTTP layer; `headers` are extra raw header lines, each ending in CRLF."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: bytes = b""


Respond = Callable[[Reply], None]


class Client(Protocol):
    """Who waits for an inference answer: the HTTP layer's exchange."""

    @property
    def gone(self) -> bool:
        """The client closed its connection: nobody reads the answer any more."""

    def respond(self, reply: Reply) -> None:
        """Sends the answer."""


# Bodies at least this large are decoded in a thread: decoding 8 MiB of JSON takes over a second.
DECODE_INLINE_BYTES = 256 * 1024


def error_reply(error: RequestError) -> Reply:
    """The JSON error `{"error": "..."}` with the error's status (and Retry-After on 503)."""
    headers = b"" if error.retry_after is None else b"retry-after: %d\r\n" % error.retry_after
    return Reply(error.status, codec.dumps({"error": error.message}), JSON, headers)


class _Call:
    """One inference request from decoding to its answer; implements batching.Job."""

    __slots__ = ("client", "method", "plane", "rows", "started", "x")
    protocol = "v1"

    def __init__(
        self, plane: DataPlane, x: np.ndarray, method: str, client: Client, started: float
    ) -> None:
        self.plane = plane
        self.x = x
        self.method = method
        self.client = client
        self.started = started
        self.rows = 0  # rows counted in flight, given back when the call ends

    @property
    def gone(self) -> bool:
        return self.client.gone

    def done(self, result: np.ndarray) -> None:
        self.plane.log_payload(self.x, self.method, result)
        self.end(Reply(200, v1.encode(result)))

    def fail(self, error: RequestError) -> None:
        self.end(error_reply(error))

    def drop(self) -> None:
        """Ends the call unanswered: its client has gone."""
        self.plane.release(self)

    def end(self, reply: Reply) -> None:
        self.plane.release(self)
        self.plane.finish(self.protocol, self.started, reply, self.client.respond)


class _V2Call(_Call):
    __slots__ = ("request",)
    protocol = "v2"

    def __init__(
        self, plane: DataPlane, request: v2.Request, client: Client, started: float
    ) -> None:
        super().__init__(plane, request.x, request.method, client, started)
        self.request = request

    def done(self, result: np.ndarray) -> None:
        plane = self.plane
        plane.log_payload(self.x, self.method, result)
        body, header_length = v2.encode(result, self.request, plane.model_name, plane.model_version)
        if header_length is None:
            reply = Reply(200, body)
        else:
            reply = Reply(
                200,
                body,
                OCTET_STREAM,
                b"inference-header-content-length: %d\r\n" % header_length,
            )
        self.end(reply)


# Decodes a request body into a call (run on the loop or in a thread).
_Decode = Callable[[], _Call]


class DataPlane:
    """Serves one model: health, metadata, V1 predict and V2 infer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        *,
        model_name: str,
        model_version: str | None,
        max_batch_size: int,
        max_batch_wait_seconds: float,
        max_queue_depth: int,
        is_ready: Callable[[], bool],
        admission: Admission,
        drift_settings: drift.WindowSettings | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self._loop = loop
        self._metrics = metrics
        self._is_ready = is_ready
        self.admission = admission
        # Decoding large bodies and predicting on more rows than a batch: two threads at most, so
        # that such work waits its turn instead of piling up (admission bounds what waits).
        self._executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="work")
        self._finite_only = False  # the model refuses NaN and infinity (learnt when loaded)
        self._batch_settings = (max_batch_size, max_batch_wait_seconds, max_queue_depth)
        self._drift_settings = drift_settings or drift.WindowSettings()
        self._payload_log: payloadlog.PayloadLogger | None = None
        self._runtime: runtime.SklearnRuntime | None = None
        self._batcher: batching.Batcher | None = None
        self._n_features: int | None = None
        self._v2_metadata = b""
        self._v1_ready = codec.dumps({"name": model_name, "ready": False})
        self._server_metadata = codec.dumps(
            {"name": "modelserver", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    @property
    def loaded(self) -> bool:
        """Whether this worker's model is loaded (readiness also waits for the other workers)."""
        return self._runtime is not None

    @property
    def queue_depth(self) -> int:
        """Requests waiting in this worker's batcher."""
        return 0 if self._batcher is None else self._batcher.depth

    def set_runtime(
        self,
        model: runtime.SklearnRuntime,
        reference: drift.Profile | None = None,
        payload_log: payloadlog.PayloadLogger | None = None,
    ) -> None:
        """Starts serving a loaded model (watched against `reference`, its requests and answers
        logged to `payload_log`, when given)."""
        self._payload_log = payload_log
        max_batch_size, max_wait, max_queue_depth = self._batch_settings
        self._batcher = batching.Batcher(
            self._loop,
            predictions.observed(model.run, self._observers(model, reference)),
            max_batch_size=max_batch_size,
            max_wait_seconds=max_wait,
            max_queue_depth=max_queue_depth,
            observe_batch=self._metrics.observe_batch,
            observe_queue=self._metrics.observe_queue,
            executor=self._executor,
        )
        self._finite_only = _refuses_nan(model)
        self._n_features = model.info.n_features
        self._v2_metadata = codec.dumps(_v2_metadata(self.model_name, self.model_version, model))
        self._v1_ready = codec.dumps({"name": self.model_name, "ready": True})
        self._metrics.observe_load(model.info.load_seconds)
        self._runtime = model

    def _observers(
        self, model: runtime.SklearnRuntime, reference: drift.Profile | None
    ) -> list[predictions.Observer]:
        """What watches every predict call: the predictions per class or value, and the drift
        against the reference profile."""
        info = model.info
        if info.is_classifier and info.classes is None:
            return []  # multi-output classifiers: one set of classes per output, not counted
        classes = info.classes if info.is_classifier else None
        registry = self._metrics.registry
        value_buckets = predictions.DEFAULT_VALUE_BUCKETS
        if reference is not None and reference.prediction_edges:
            value_buckets = reference.prediction_edges  # the histogram then shows the PSI bins
        name, version = self.model_name, self.model_version
        counter = predictions.PredictionCounter(
            registry, model=name, version=version, classes=classes, value_buckets=value_buckets
        )
        observers: list[predictions.Observer] = [counter.observe]
        self._metrics.also_flush(counter.flush)
        if reference is not None:
            watch = drift.DriftMonitor(
                registry,
                reference,
                model=name,
                version=version,
                classes=classes,
                settings=self._drift_settings,
            )
            observers.append(watch.observe)
            self._metrics.also_flush(watch.flush)
        return observers

    # -- health and metadata ------------------------------------------------------------------

    def live(self) -> Reply:
        """200 while the process runs."""
        return Reply(200, b'{"live":true}')

    def root(self) -> Reply:
        """`GET /`: liveness as KServe V1 spells it (its client reads "status"), and as V2 does."""
        return Reply(200, b'{"status":"alive","live":true}')

    def ready(self) -> Reply:
        """200 once every worker has loaded the model and none is shutting down."""
        if self._is_ready():
            return Reply(200, b'{"ready":true}')
        return Reply(503, b'{"ready":false}')

    def model_ready(self, name: str) -> Reply:
        """Readiness of the named model (404 for another name)."""
        self._check_name(name)
        if self._is_ready():
            return Reply(200, codec.dumps({"name": name, "ready": True}))
        return Reply(503, codec.dumps({"name": name, "ready": False}))

    def server_metadata(self) -> Reply:
        """OIP server metadata."""
        return Reply(200, self._server_metadata)

    def model_metadata(self, name: str) -> Reply:
        """OIP model metadata: inputs, outputs and what was loaded."""
        self._check_name(name)
        if self._runtime is None:
            raise UnavailableError(f"model {name!r} is not loaded yet")
        return Reply(200, self._v2_metadata)

    def models_v1(self) -> Reply:
        """KServe V1 model list."""
        return Reply(200, codec.dumps({"models": [self.model_name]}))

    def model_status_v1(self, name: str) -> Reply:
        """KServe V1 model status `{"name": ..., "ready": ...}`."""
        self._check_name(name)
        return Reply(200, self._v1_ready)

    def metrics(self) -> Reply:
        """Prometheus text of all workers."""
        return Reply(200, self._metrics.render(), METRICS_CONTENT_TYPE.encode())

    # -- inference ------------------------------------------------------------------------------

    def predict_v1(self, name: str, body: bytes, client: Client) -> None:
        """KServe V1 `:predict`."""
        started = time.perf_counter()

        def decode() -> _Call:
            x, method = v1.decode(body, self._n_features)
            return _Call(self, x, method, client, started)

        self._infer("v1", name, len(body), decode, client=client, started=started)

    def infer_v2(self, name: str, body: bytes, header_length: int | None, client: Client) -> None:
        """OIP V2 `/infer`."""
        started = time.perf_counter()

        def decode() -> _Call:
            request = v2.decode(body, header_length, self._n_features)
            return _V2Call(self, request, client, started)

        self._infer("v2", name, len(body), decode, client=client, started=started)

    def _infer(
        self,
        protocol: str,
        name: str,
        size: int,
        decode: _Decode,
        *,
        client: Client,
        started: float,
    ) -> None:
        """Decodes (in a thread when large), checks and queues one inference request."""
        try:
            self._check_name(name)
            batcher = self._serving_batcher(name)
            if size < DECODE_INLINE_BYTES:
                self._submit(batcher, decode())
                return
        except RequestError as error:
            self.finish(protocol, started, error_reply(error), client.respond)
            return

        def decode_unless_gone() -> _Call | None:
            # Threads take bodies in turn: by now the client may have gone.
            return None if client.gone else decode()

        future = self._loop.run_in_executor(self._executor, decode_unless_gone)
        future.add_done_callback(
            functools.partial(self._decoded, protocol, batcher, client, started)
        )

    def _decoded(
        self,
        protocol: str,
        batcher: batching.Batcher,
        client: Client,
        started: float,
        future: asyncio.Future[_Call | None],
    ) -> None:
        if client.gone or future.cancelled():
            return
        try:
            call = future.result()
            if call is not None:
                self._submit(batcher, call)
        except RequestError as error:
            self.finish(protocol, started, error_reply(error), client.respond)
        except Exception:
            log.exception("decoding a request failed")
            reply = error_reply(InternalError("internal server error"))
            self.finish(protocol, started, reply, client.respond)

    def _submit(self, batcher: batching.Batcher, call: _Call) -> None:
        """Checks a decoded call completely, counts its rows in and queues it."""
        self._check_method(call.method)
        if self._finite_only and not np.isfinite(call.x).all():
            raise BadRequestError(
                "the model rejected the input: it holds NaN or infinity, and this model "
                "takes finite numbers only"
            )
        rows = len(call.x)
        self.admission.rows.take(rows)
        call.rows = rows
        try:
            batcher.submit(call)
        except RequestError:
            self.release(call)
            raise

    def release(self, call: _Call) -> None:
        """Gives a call's rows back (once)."""
        self.admission.rows.give(call.rows)
        call.rows = 0

    def finish(self, protocol: str, started: float, reply: Reply, respond: Respond) -> None:
        """Counts an inference answer and hands it to the HTTP layer."""
        self._metrics.observe_request(protocol, reply.status, time.perf_counter() - started)
        respond(reply)

    def log_payload(self, x: np.ndarray, method: str, result: np.ndarray) -> None:
        """Hands an answered request to the payload log, if there is one."""
        if self._payload_log is not None:
            self._payload_log.log(x, method, result)

    async def stop_payload_log(self) -> None:
        """Gives the payload log a second to send what it holds, then stops it."""
        if self._payload_log is not None:
            await self._payload_log.stop(timeout=1.0)

    def _check_name(self, name: str) -> None:
        if name != self.model_name:
            raise NotFoundError(f"model {name!r} not found; this server serves {self.model_name!r}")

    def _serving_batcher(self, name: str) -> batching.Batcher:
        if self._batcher is None:
            raise UnavailableError(f"model {name!r} is not loaded yet")
        return self._batcher

    def _check_method(self, method: str) -> None:
        model = self._runtime
        if model is not None and not model.supports(method):
            raise BadRequestError(
                f"{method} is not available: {model.info.model_class} only has "
                f"{' and '.join(model.info.methods)}"
            )


def _refuses_nan(model: runtime.SklearnRuntime) -> bool:
    """Whether the model rejects NaN input: then such requests are refused before batching."""
    features = model.info.n_features
    if features is None:
        return False
    try:
        model.run(runtime.PREDICT, np.full((1, features), np.nan))
    except ValueError:
        return True
    except Exception:  # any other failure says nothing about NaN
        return False
    return False


def _v2_metadata(
    name: str, version: str | None, model: runtime.SklearnRuntime
) -> dict[str, object]:
    info = model.info
    features = -1 if info.n_features is None else info.n_features
    outputs = []
    for method in info.methods:
        dtype = info.output_dtypes.get(method)
        shape = [-1, *info.output_shapes.get(method, ())]
        if method == runtime.PREDICT_PROBA and info.classes is not None:
            shape = [-1, len(info.classes)]
        outputs.append(
            {
                "name": method,
                "datatype": "FP64" if dtype is None else v2.datatype_of(np.dtype(dtype)),
                "shape": shape,
            }
        )
    return {
        "name": name,
        "versions": [] if version is None else [version],
        "platform": "scikit-learn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, features]}],
        "outputs": outputs,
        "parameters": {
            "model_class": info.model_class,
            "n_features_in": info.n_features,
            "classes": info.classes,
            "format": info.format,
            "sha256": "sha256:" + info.sha256,
            "load_seconds": round(info.load_seconds, 6),
            "fast_path": info.fast_path,
            "versions": info.versions,
        },
    }
