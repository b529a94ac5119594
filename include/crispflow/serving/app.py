"""The model server's HTTP API (FastAPI): predict, feedback, health, readiness, metrics and a description.

`create_app(ServeConfig(model=...))` builds the app; `crispflow serve` runs it with uvicorn. Handlers are thin:
the body is read (bounded) on the event loop, then handed to the scoring thread (`Batcher`), which takes every
/predict request that arrived while it was busy (micro-batching, no timer) and scores them together against one
snapshot of the served models: each request's records are validated against their arm's signature (arm from
policy.py), then each arm scores the records of the whole batch in one `predict_proba` — the model call costs
about the same for 1 row as for 100, so a busy server answers many more requests per second. Ids, validation,
metrics and logging stay per request, and one request's bad input or model failure never fails another.
The prediction rows are queued to the prediction log before the response is returned (never waiting on I/O), so a
clean shutdown (SIGTERM → uvicorn drains requests → lifespan shutdown → log closed) loses no answered prediction.
Records mirrored to the shadow are scored by a worker thread after the response, logged with `served=False`, and
never returned."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from crispflow.errors import CrispflowError
from crispflow.serving.metrics import CONTENT_TYPE, ServingMetrics
from crispflow.serving.models import LoadedModel, ModelStore, Snapshot
from crispflow.serving.policy import CANARY, SHADOW
from crispflow.serving.validation import (
    PayloadError,
    check_content_type,
    feedback_items,
    parse_json,
    problem,
    records_of,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("crispflow.serving")


class ServeConfigError(CrispflowError):
    """A server option is invalid; the message names the option and the rule."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs. `predictions_url` None or "" disables the prediction log (and /feedback)."""

    model: str
    tracking_uri: str | None = None
    predictions_url: str | None = None
    poll_interval: float = 2.0
    max_body_bytes: int = 1 << 20
    max_records: int = 1000
    storage_options: dict[str, Any] | None = None
    positive_labels: tuple[str, ...] = ()  # feedback label values meaning 1 (besides true/1/yes/positive)
    negative_labels: tuple[str, ...] = ()
    shadow_queue: int = 1000  # mirrored requests waiting for the shadow model; more are dropped and counted
    refused_retry: float = 60.0  # seconds before a refused version is tried again
    log_flush_interval: float = 1.0
    close_timeout: float = 30.0  # seconds the prediction log may take to flush at shutdown
    batch_requests: int = 64  # most /predict requests scored together (micro-batching); 1 turns batching off

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ServeConfigError(f"model: must be a registered model name, got {self.model!r}")
        for name in ("poll_interval", "refused_retry", "log_flush_interval", "close_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ServeConfigError(f"{name}: must be a number > 0, got {value!r}")
        for name in ("max_body_bytes", "max_records", "shadow_queue", "batch_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"{name}: must be an integer >= 1, got {value!r}")


class NotReady(CrispflowError):
    """No champion is loaded (yet)."""


class ModelFailure(CrispflowError):
    """The model raised while scoring valid input: a real server error (500)."""

    def __init__(self, alias: str, version: str, exc: Exception, request_ids: list[str]) -> None:
        super().__init__(f"the {alias} model (v{version}) failed: {type(exc).__name__}")
        self.request_ids = request_ids


Job = tuple[LoadedModel, list[dict[str, Any]], list[str], list[str | None], datetime, tuple[str, ...]]


def request_ids(n: int) -> list[str]:
    """`n` random (version 4) UUID strings, as `str(uuid.uuid4())` makes them, from one `os.urandom` call."""
    raw = bytearray(os.urandom(16 * n))
    for k in range(6, 16 * n, 16):
        raw[k] = (raw[k] & 0x0F) | 0x40  # version 4
        raw[k + 2] = (raw[k + 2] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return [f"{h[o:o + 8]}-{h[o + 8:o + 12]}-{h[o + 12:o + 16]}-{h[o + 16:o + 20]}-{h[o + 20:o + 32]}"
            for o in range(0, 32 * n, 32)]


Arrival = tuple[bytes, float, datetime]  # a /predict body, perf_counter() and wall time at its arrival


@dataclass(slots=True)
class _Prepared:
    """One parsed, validated /predict request waiting for its scores (filled in by `_score_parts`)."""

    slot: int
    records: list[dict[str, Any]]
    ids: list[str]
    entities: list[str | None]
    chosen: list[str]  # arm per record
    groups: dict[str, list[int]]  # arm → record indexes
    allowed: tuple[str, ...]
    start: float
    ts: datetime
    scores: list[float]


def _score_parts(model: LoadedModel, parts: list[tuple[_Prepared, list[int]]]) -> None:
    """One `predict_proba` over the given records of several requests; scores written back to each request."""
    if len(parts) == 1 and len(parts[0][1]) == len(parts[0][0].records):
        records = parts[0][0].records
    else:
        records = [p.records[i] for p, index in parts for i in index]
    values = model.score(model.schema.frame(records)).tolist()
    if not all(map(math.isfinite, values)):
        raise ValueError("the model returned a non-finite probability")
    position = 0
    for p, index in parts:
        for i in index:
            p.scores[i] = values[position]
            position += 1


class Batcher:
    """Micro-batching of /predict: requests queue while the model is busy, and the scoring thread takes all that
    arrived meanwhile (at most `max_requests`) as one batch. No timer: an idle server scores a request at once,
    a busy one amortises each model call over every request that waited for it."""

    def __init__(self, score: Callable[[list[Arrival]], list[dict[str, Any] | Exception]], max_requests: int) -> None:
        self._score = score
        self._max = max_requests
        self._queue: queue.SimpleQueue[tuple[Arrival, Future[dict[str, Any]]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="crispflow-scoring", daemon=True)
        self.running = False

    def start(self) -> None:
        if not self.running and not self._thread.is_alive():
            self.running = True
            self._thread.start()

    def submit(self, body: bytes) -> Future[dict[str, Any]]:
        """Queue one request; the future holds its response or raises its exception."""
        future: Future[dict[str, Any]] = Future()
        self._queue.put(((body, time.perf_counter(), datetime.now(UTC)), future))
        return future

    def close(self, timeout: float) -> None:
        """Score what is queued, then stop."""
        self.running = False  # later requests are scored in the threadpool
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                outcomes = self._score([arrival for arrival, _ in batch])
            except Exception as exc:  # a bug, not bad input: every request of the batch gets a 500
                log.exception("scoring a batch of %d requests failed", len(batch))
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.set_running_or_notify_cancel():
                    continue  # the client went away
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


class ShadowWorker:
    """Scores mirrored records with the shadow model on its own thread; results are only logged."""

    def __init__(self, model: str, sink: Callable[[list[dict[str, Any]]], None] | None, metrics: ServingMetrics,
                 max_jobs: int) -> None:
        self.model = model
        self._sink = sink
        self._metrics = metrics
        self._jobs: queue.Queue[Job | None] = queue.Queue(max_jobs)
        self._thread = threading.Thread(target=self._run, name="crispflow-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a mirrored request; when the queue is full it is dropped and counted, never waited on."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self._metrics.shadow_dropped.inc(len(job[1]))

    def close(self, timeout: float) -> None:
        """Score what is queued, then stop."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._score(*job)
            except Exception:  # the shadow never affects serving
                log.exception("shadow scoring failed")
                self._metrics.errors.labels("shadow").inc()

    def _score(self, model: LoadedModel, records: list[dict[str, Any]], ids: list[str],
               entities: list[str | None], ts: datetime, allowed: tuple[str, ...]) -> None:
        start = time.perf_counter()
        valid = [i for i, r in enumerate(records) if not model.schema.check_record(i, r, allowed)]
        scores: dict[int, float] = {}
        if valid:
            try:
                values = model.score(model.schema.frame([records[i] for i in valid]))
                scores = {i: float(s) for i, s in zip(valid, values, strict=True)}
            except Exception:
                log.exception("shadow model v%s failed", model.version)
                self._metrics.errors.labels("shadow").inc()
        if len(valid) < len(records):  # the shadow's signature refuses what the served arm accepted
            self._metrics.errors.labels("shadow_validation").inc(len(records) - len(valid))
        latency_ms = (time.perf_counter() - start) * 1000
        if self._sink is not None:
            self._sink([{"request_id": ids[i], "ts": ts, "model": self.model, "version": model.version,
                         "alias": SHADOW, "served": False, "entity": entities[i], "score": scores.get(i),
                         "latency_ms": latency_ms, "status": "ok" if i in scores else "error",
                         "features": records[i]} for i in range(len(records))])


class ModelServer:
    """The state behind the app: config, metrics, the model store, the prediction log and the shadow worker."""

    def __init__(self, config: ServeConfig, *, prediction_log: Any | None = None,
                 client: Callable[[], MlflowClient] | None = None) -> None:
        self.config = config
        self.prediction_log = prediction_log
        self.metrics = ServingMetrics(self._log_stats)
        if config.predictions_url:  # the newest drift windows of the served versions, as gauges
            from crispflow.monitoring.gauges import DriftCollector
            from crispflow.predictions.store import storage_options_from_env

            self.metrics.registry.register(DriftCollector(
                config.predictions_url, config.model,
                storage_options=config.storage_options or storage_options_from_env(config.predictions_url)))
        if client is None:
            from crispflow.model import registry

            def client() -> MlflowClient:
                return registry.client(config.tracking_uri)

        self.store = ModelStore(config.model, client, poll_interval=config.poll_interval,
                                refused_retry=config.refused_retry, metrics=self.metrics)
        self.shadow = ShadowWorker(config.model, self._log, self.metrics, config.shadow_queue)
        self.batcher = Batcher(self.predict_batch, config.batch_requests)
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.prediction_log is None and self.config.predictions_url:
            from crispflow.predictions.store import storage_options_from_env
            from crispflow.predictions.writer import PredictionLog

            options = self.config.storage_options or storage_options_from_env(self.config.predictions_url)
            self.prediction_log = PredictionLog(self.config.predictions_url, self.config.model,
                                                flush_interval=self.config.log_flush_interval,
                                                storage_options=options)
        if self.prediction_log is not None:
            self.prediction_log.start()
        else:
            log.warning("no prediction log configured: predictions are not recorded and /feedback answers 503")
        self.shadow.start()
        self.batcher.start()
        self.store.start()

    def close(self) -> None:
        """Stop polling, finish shadow work, flush the prediction log (SIGTERM reaches here via uvicorn)."""
        self.store.stop()
        self.batcher.close(self.config.close_timeout)
        self.shadow.close(self.config.close_timeout)
        if self.prediction_log is not None:
            self.prediction_log.close(self.config.close_timeout)
            log.info("prediction log closed: %s rows written, %s dropped", self.prediction_log.written,
                     self.prediction_log.dropped)

    def _log_stats(self) -> dict[str, float] | None:
        plog = self.prediction_log
        if plog is None:
            return None
        return {"written": plog.written, "dropped": plog.dropped, "pending": plog.pending}

    def _log(self, rows: list[dict[str, Any]]) -> None:
        if self.prediction_log is None or not rows:
            return
        try:
            self.prediction_log.log(rows)
        except Exception:  # logging must never fail a request
            log.exception("prediction log refused %d rows", len(rows))
            self.metrics.errors.labels("log").inc()

    # --- predict -----------------------------------------------------------------------------------------------

    def predict(self, body: bytes) -> dict[str, Any]:
        """Parse, validate, score, log. Raises PayloadError (4xx), NotReady (503) or ModelFailure (500)."""
        outcome = self.predict_batch([(body, time.perf_counter(), datetime.now(UTC))])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def predict_batch(self, requests: Sequence[Arrival]) -> list[dict[str, Any] | Exception]:
        """Score several requests together against ONE snapshot: each arm scores the valid records of all of them
        in one `predict_proba`. Returns, per request and in order, its response or its exception (PayloadError,
        NotReady, ModelFailure): a request never fails because of another one in the batch."""
        snap = self.store.snapshot
        outcomes: list[dict[str, Any] | Exception | None] = [None] * len(requests)
        prepared: list[_Prepared] = []
        for slot, (body, start, ts) in enumerate(requests):
            try:
                prepared.append(self._prepare(slot, body, start, ts, snap))
            except (PayloadError, NotReady) as exc:
                outcomes[slot] = exc
        if prepared:
            failures = self._score(prepared, snap.arms)
            for p in prepared:
                outcomes[p.slot] = failures.get(p.slot) or self._finish(p, snap)
        return outcomes  # type: ignore[return-value]

    def _prepare(self, slot: int, body: bytes, start: float, ts: datetime, snap: Snapshot) -> _Prepared:
        """Parse and validate one request, and assign each record an arm (PayloadError / NotReady if it cannot)."""
        records = records_of(parse_json(body), self.config.max_records)
        if snap.champion is None:
            raise NotReady(snap.not_ready or "no champion loaded")
        name, policy, arms = self.config.model, snap.policy, snap.arms
        ids = request_ids(len(records))
        has_canary = CANARY in arms
        entities = [policy.entity_of(r) if isinstance(r, dict) else None for r in records]
        chosen = [policy.arm(name, e, rid, has_canary=has_canary) for e, rid in zip(entities, ids, strict=True)]
        allowed = (policy.entity_key,) if policy.entity_key else ()
        problems = [p for i, r in enumerate(records) for p in arms[chosen[i]].schema.check_record(i, r, allowed)]
        if problems:
            raise PayloadError(422, problems)
        groups: dict[str, list[int]] = {}
        for i, alias in enumerate(chosen):
            groups.setdefault(alias, []).append(i)
        return _Prepared(slot, records, ids, entities, chosen, groups, allowed, start, ts, [0.0] * len(records))

    def _score(self, prepared: list[_Prepared], arms: Mapping[str, LoadedModel]) -> dict[int, ModelFailure]:
        """Fill every request's scores, one model call per arm; if a batched call fails, each request is scored
        alone so that only the requests the model fails on get a ModelFailure (slot → failure)."""
        by_alias: dict[str, list[tuple[_Prepared, list[int]]]] = {}
        for p in prepared:
            for alias, index in p.groups.items():
                by_alias.setdefault(alias, []).append((p, index))
        failures: dict[int, ModelFailure] = {}
        for alias, parts in by_alias.items():
            model = arms[alias]
            try:
                _score_parts(model, parts)
                continue
            except Exception as exc:
                if len(parts) == 1:
                    self._model_failed(alias, model, parts[0], exc, failures)
                    continue
            for part in parts:  # the batch failed: find the culprits
                if part[0].slot in failures:
                    continue
                try:
                    _score_parts(model, [part])
                except Exception as exc:
                    self._model_failed(alias, model, part, exc, failures)
        return failures

    def _model_failed(self, alias: str, model: LoadedModel, part: tuple[_Prepared, list[int]], exc: Exception,
                      failures: dict[int, ModelFailure]) -> None:
        p, index = part
        log.error("%s v%s failed on %d valid records", alias, model.version, len(index), exc_info=exc)
        self.metrics.errors.labels("model").inc()
        latency_ms = (time.perf_counter() - p.start) * 1000
        self._log([self._row(p.ids[i], p.ts, model, alias, p.entities[i], None, latency_ms, "error", p.records[i])
                   for i in index])
        failure = ModelFailure(alias, model.version, exc, p.ids)
        failure.__cause__ = exc
        failures[p.slot] = failure

    def _finish(self, p: _Prepared, snap: Snapshot) -> dict[str, Any]:
        """Metrics, response items, prediction log rows and shadow mirroring of one scored request."""
        name, policy, arms = self.config.model, snap.policy, snap.arms
        records, ids, scores, chosen = p.records, p.ids, p.scores, p.chosen
        elapsed = time.perf_counter() - p.start
        for alias, index in p.groups.items():
            version = arms[alias].version
            self.metrics.records.labels(version, alias).inc(len(index))
            self.metrics.latency.labels(version, alias).observe(elapsed)
            observe = self.metrics.scores.labels(version, alias).observe
            for i in index:
                observe(scores[i])
        items = []
        for i, alias in enumerate(chosen):
            model = arms[alias]
            items.append({"request_id": ids[i], "score": scores[i], "label": int(scores[i] >= model.threshold),
                          "model_version": model.version, "alias": alias})
        latency_ms = elapsed * 1000
        self._log([self._row(ids[i], p.ts, arms[a], a, p.entities[i], scores[i], latency_ms, "ok", records[i])
                   for i, a in enumerate(chosen)])
        shadow = arms.get(SHADOW)
        if shadow is not None and policy.shadow_share > 0:
            mirrored = [i for i, rid in enumerate(ids) if policy.mirrored(name, rid, has_shadow=True)]
            if mirrored:
                self.shadow.submit((shadow, [records[i] for i in mirrored], [ids[i] for i in mirrored],
                                    [p.entities[i] for i in mirrored], p.ts, p.allowed))
        return {"model": name, "predictions": items}

    def _row(self, request_id: str, ts: datetime, model: LoadedModel, alias: str, entity: str | None,
             score: float | None, latency_ms: float, status: str, record: dict[str, Any]) -> dict[str, Any]:
        return {"request_id": request_id, "ts": ts, "model": self.config.model, "version": model.version,
                "alias": alias, "served": True, "entity": entity, "score": score, "latency_ms": latency_ms,
                "status": status, "features": record}

    def feedback(self, body: bytes) -> int:
        if self.prediction_log is None:
            raise NotReady("the prediction log is disabled: feedback cannot be stored")
        pairs = feedback_items(parse_json(body), self.config.max_records, self.config.positive_labels,
                               self.config.negative_labels)
        now = datetime.now(UTC)
        self.prediction_log.log_feedback([{"request_id": rid, "label": label, "ts": now} for rid, label in pairs])
        self.metrics.feedback.inc(len(pairs))
        return len(pairs)

    def describe(self) -> dict[str, Any]:
        plog = self.prediction_log
        return {"model": self.config.model, **self.store.snapshot.describe(),
                "limits": {"max_body_bytes": self.config.max_body_bytes, "max_records": self.config.max_records},
                "poll_interval": self.config.poll_interval,
                "prediction_log": None if plog is None else {"root": getattr(plog, "root", None),
                                                             **(self._log_stats() or {})}}


# --- HTTP ------------------------------------------------------------------------------------------------------


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload, allow_nan=False).encode(), status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise PayloadError(400, [problem(None, None, "content_length", f"invalid Content-Length {declared!r}")])
        if int(declared) > limit:
            raise PayloadError(413, [problem(None, None, "max_bytes",
                                             f"the body has {int(declared)} bytes, more than the limit of {limit}")])
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadError(413, [problem(None, None, "max_bytes", f"the body exceeds the limit of {limit} bytes")])
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServeConfig, *, prediction_log: Any | None = None,
               client: Callable[[], MlflowClient] | None = None) -> FastAPI:
    """The server app. `prediction_log` (anything with the PredictionLog interface) replaces the one built from
    `config.predictions_url`; `client` builds the MLflow client (default: `registry.client(tracking_uri)`)."""
    server = ModelServer(config, prediction_log=prediction_log, client=client)
    metrics = server.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(server.start)
        try:
            yield
        finally:
            await run_in_threadpool(server.close)

    app = FastAPI(title=f"crispflow model server: {config.model}", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.server = server

    def answer(endpoint: str, status: int, payload: Any) -> Response:
        metrics.requests.labels(endpoint, str(status)).inc()
        return _json(status, payload)

    def refused(endpoint: str, exc: PayloadError) -> Response:
        metrics.validation_failures.labels(exc.details[0]["rule"] if exc.details else "unknown").inc()
        return answer(endpoint, exc.status, {"detail": exc.details})

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, config.max_body_bytes)
            if server.batcher.running:
                result = await asyncio.wrap_future(server.batcher.submit(body))
            else:  # the app runs without its lifespan (no scoring thread): score in the threadpool
                result = await run_in_threadpool(server.predict, body)
        except PayloadError as exc:
            return refused("predict", exc)
        except NotReady as exc:
            return answer("predict", 503, {"detail": [problem(None, None, "not_ready", str(exc))]})
        except ModelFailure as exc:
            return answer("predict", 500, {"detail": [{**problem(None, None, "model_error", str(exc)),
                                                       "request_ids": exc.request_ids}]})
        return answer("predict", 200, result)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        try:
            check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, config.max_body_bytes)
            accepted = await run_in_threadpool(server.feedback, body)
        except PayloadError as exc:
            return refused("feedback", exc)
        except NotReady as exc:
            return answer("feedback", 503, {"detail": [problem(None, None, "not_ready", str(exc))]})
        return answer("feedback", 202, {"accepted": accepted})

    @app.get("/health")
    def health() -> Response:
        return answer("health", 200, {"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        snap = server.store.snapshot
        if snap.champion is None:
            return answer("ready", 503, {"ready": False, "reason": snap.not_ready or "no champion loaded"})
        return answer("ready", 200, {"ready": True, "model": config.model, "champion": snap.champion.version,
                                     "aliases": {a: m.version for a, m in snap.arms.items()}})

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/")
    @app.get("/model")
    def describe() -> Response:
        return _json(200, server.describe())

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.errors.labels("internal").inc()
        return _json(500, {"detail": [problem(None, None, "internal", f"internal error: {type(exc).__name__}")]})

    return app
