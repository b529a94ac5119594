"""The model server's HTTP API (FastAPI): predict, feedback and describe per model, the same routes for the default
model, a model listing, health, readiness and metrics.

Routes: `POST /models/{name}/predict`, `POST /models/{name}/feedback`, `GET /models/{name}` (describe),
`GET /models` (every served model, its state and routes); `POST /predict`, `POST /feedback`, `GET /model` for
the default model (fleet.py: `--model`, else the only model; several models and no default → 404 naming the
per-model routes); `GET /health`, `GET /ready`, `GET /metrics`, `GET /` (the listing).

`POST /predict?explain=true&top_k=5` (and `/models/{name}/predict?...`) adds to each prediction an `explanation`
(`crispflow.model.explain.LocalExplainer.explain`: method, space, base_value, the top_k contributions of the spec's
features with the record's values, other, check) from the version that answered it; query parameters are
validated by `validation.explain_options` (422 per field), and a version without a working explainer answers 409
(server.py). Without `explain` the request is exactly as before.

Every route but /health and /ready needs a bearer token with its scope (auth.py, tokens.py): predict, feedback,
admin (/model, /models, /models/{name}, /) or metrics (/metrics); 401 without a valid token, 403 with the wrong
scope, 429 (Retry-After) beyond the token's rate limit. A full scoring queue answers 503 with Retry-After.

`create_app(ServeConfig(...))` builds the app; `crispflow serve` runs it with uvicorn. Handlers are thin: the body
is read (bounded) on the event loop, then /predict goes to the model's scoring thread (batcher.py) and the work is
done by its `ModelServer` (server.py); typed errors become 4xx/5xx problem responses here."""

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

from crispflow.serving.auth import RateLimiter, requirer
from crispflow.serving.batcher import QueueFull
from crispflow.serving.fleet import Fleet, NoDefaultModel, UnknownModel
from crispflow.serving.metrics import CONTENT_TYPE
from crispflow.serving.server import LogFactory, ModelFailure, ModelServer, NotReady
from crispflow.serving.tokens import Caller, TokenStore
from crispflow.serving.validation import PayloadError, check_content_type, explain_options, problem

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


def create_app(config: ServeConfig, *, prediction_log: LogFactory | None = None,
               client: Callable[[], MlflowClient] | None = None) -> FastAPI:
    """The server app. `prediction_log` builds a model's prediction log from its name (anything with the
    PredictionLog interface; default: a `PredictionLog` under `config.predictions_url`); `client` builds the
    MLflow client (default: `registry.client(tracking_uri)`)."""
    tokens = TokenStore(config.tokens_file)  # TokenError now if the file is missing or malformed
    if config.tokens_file is None:
        log.warning("no token file configured: every route but /health and /ready answers 401")
    fleet = Fleet(config, log_factory=prediction_log, client=client)
    metrics = fleet.metrics
    require = requirer(tokens, RateLimiter(config.rate_limit, config.rate_burst),
                       on_refused=lambda code: metrics.requests.labels("", "auth", code).inc())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fleet.start()
        app.state.serving = True
        try:
            yield
        finally:
            app.state.serving = False
            await run_in_threadpool(fleet.close)

    app = FastAPI(title="crispflow model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.fleet = fleet
    app.state.serving = False

    def answer(model: str, endpoint: str, status: int, payload: Any) -> Response:
        metrics.requests.labels(model, endpoint, str(status)).inc()
        return _json(status, payload)

    def failure(model: str, endpoint: str, exc: Exception) -> Response:
        """The problem response of a typed error (anything else is a bug: re-raised, answered 500 below)."""
        if isinstance(exc, PayloadError):
            metrics.validation_failures.labels(model, exc.details[0]["rule"] if exc.details else "unknown").inc()
            return answer(model, endpoint, exc.status, {"detail": exc.details})
        if isinstance(exc, UnknownModel | NoDefaultModel):
            return answer("", endpoint, 404, {"detail": [problem(None, "model", "model", str(exc))]})
        if isinstance(exc, QueueFull):
            metrics.errors.labels("queue_full").inc()
            metrics.requests.labels(model, endpoint, "503").inc()
            return Response(json.dumps({"detail": [problem(None, None, "queue_full", str(exc))]}).encode(),
                            status_code=503, media_type="application/json", headers={"Retry-After": "1"})
        if isinstance(exc, NotReady):
            return answer(model, endpoint, 503, {"detail": [problem(None, None, "not_ready", str(exc))]})
        if isinstance(exc, ModelFailure):
            return answer(model, endpoint, 500, {"detail": [{**problem(None, None, exc.rule, str(exc)),
                                                             "request_ids": exc.request_ids}]})
        raise exc

    async def pick(name: str | None) -> ModelServer:
        """The model of a route (None: the default), loaded; loading an idle model happens off the event loop."""
        found = fleet.default(load=False) if name is None else fleet.get(name, load=False)
        if found is not None:
            return found
        if name is None:
            return await run_in_threadpool(fleet.default)
        return await run_in_threadpool(fleet.get, name)

    def label(name: str | None) -> str:
        """The `model` label of a request: only names the server serves (a URL must not mint series)."""
        if name is None:
            return fleet.default_name() or ""
        return name if fleet.known(name) else ""

    async def predict(request: Request, name: str | None) -> Response:
        try:
            server = await pick(name)
            check_content_type(request.headers.get("content-type"))
            # no query string (the usual request): nothing parsed, nothing to explain
            explain = explain_options(request.query_params.multi_items()) if request.scope.get("query_string") \
                else None
            body = await _read_body(request, config.max_body_bytes)
            future = server.submit(body, explain) if app.state.serving else None
            if future is not None:
                result = await asyncio.wrap_future(future)
            else:  # no lifespan (or shutting down): score in the threadpool
                result = await run_in_threadpool(server.predict, body, explain)
        except (PayloadError, UnknownModel, NoDefaultModel, NotReady, ModelFailure, QueueFull) as exc:
            return failure(label(name), "predict", exc)
        return answer(server.name, "predict", 200, result)

    async def feedback(request: Request, name: str | None, caller: Caller) -> Response:
        try:
            server = await pick(name)
            check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, config.max_body_bytes)
            accepted = await run_in_threadpool(server.feedback, body, caller.name)
        except (PayloadError, UnknownModel, NoDefaultModel, NotReady) as exc:
            return failure(label(name), "feedback", exc)
        return answer(server.name, "feedback", 202, {"accepted": accepted})

    async def describe(name: str | None) -> Response:
        try:
            server = await pick(name)
        except (UnknownModel, NoDefaultModel, NotReady) as exc:
            return failure(label(name), "describe", exc)
        return _json(200, server.describe())

    predict_scope, feedback_scope, admin_scope = require("predict"), require("feedback"), require("admin")
    metrics_scope = require("metrics")

    @app.post("/predict")
    async def default_predict(request: Request, _: Caller = predict_scope) -> Response:
        return await predict(request, None)

    @app.post("/models/{name}/predict")
    async def named_predict(name: str, request: Request, _: Caller = predict_scope) -> Response:
        return await predict(request, name)

    @app.post("/feedback")
    async def default_feedback(request: Request, caller: Caller = feedback_scope) -> Response:
        return await feedback(request, None, caller)

    @app.post("/models/{name}/feedback")
    async def named_feedback(name: str, request: Request, caller: Caller = feedback_scope) -> Response:
        return await feedback(request, name, caller)

    @app.get("/model")
    async def describe_default(_: Caller = admin_scope) -> Response:
        return await describe(None)

    @app.get("/models/{name}")
    async def describe_named(name: str, _: Caller = admin_scope) -> Response:
        return await describe(name)

    @app.get("/")
    @app.get("/models")
    def listing(_: Caller = admin_scope) -> Response:
        return _json(200, fleet.listing())

    @app.get("/health")
    def health() -> Response:
        return answer("", "health", 200, {"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        ok, body = fleet.readiness()
        return answer("", "ready", 200 if ok else 503, body)

    @app.get("/metrics")
    def prometheus(_: Caller = metrics_scope) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.errors.labels("internal").inc()
        return _json(500, {"detail": [problem(None, None, "internal", f"internal error: {type(exc).__name__}")]})

    return app
