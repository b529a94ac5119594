"""The model server's HTTP API (FastAPI): predict, feedback, health, readiness, metrics and a description.

`create_app(ServeConfig(model=...))` builds the app; `crispflow serve` runs it with uvicorn. Handlers are thin:
the body is read (bounded) on the event loop, then /predict goes to the scoring thread (batcher.py) and the
work is done by `ModelServer` (server.py); its typed errors become 4xx/5xx problem responses here."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from crispflow.serving.metrics import CONTENT_TYPE
from crispflow.serving.server import ModelFailure, ModelServer, NotReady
from crispflow.serving.validation import PayloadError, check_content_type, problem

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.serving.config import ServeConfig

log = logging.getLogger("crispflow.serving")


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
