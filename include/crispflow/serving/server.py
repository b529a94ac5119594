"""The state behind the HTTP API (`ModelServer`): predict, feedback and describe, plus the start and stop of the
model store, the scoring thread (batcher.py), the shadow worker (shadow.py) and the prediction log.

A batch of /predict requests is scored against one snapshot of the served models: each request's records are
validated against their arm's signature (arm from policy.py), then each arm scores the records of the whole batch
in one `predict_proba`. Ids, validation, metrics and logging stay per request, and one request's bad input or model
failure never fails another. The prediction rows are queued to the prediction log before the response is returned
(never waiting on I/O), so a clean shutdown (SIGTERM → uvicorn drains requests → lifespan shutdown → log closed)
loses no answered prediction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError
from crispflow.serving.batcher import Arrival, Batcher, PreparedRequest, request_ids, score_parts
from crispflow.serving.metrics import ServingMetrics
from crispflow.serving.models import LoadedModel, ModelStore, Snapshot
from crispflow.serving.policy import CANARY, SHADOW
from crispflow.serving.shadow import ShadowWorker
from crispflow.serving.validation import PayloadError, feedback_items, parse_json, records_of

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.serving.config import ServeConfig

log = logging.getLogger("crispflow.serving")


class NotReady(CrispflowError):
    """No champion is loaded (yet)."""


class ModelFailure(CrispflowError):
    """The model raised while scoring valid input: a real server error (500)."""

    def __init__(self, alias: str, version: str, exc: Exception, request_ids: list[str]) -> None:
        super().__init__(f"the {alias} model (v{version}) failed: {type(exc).__name__}")
        self.request_ids = request_ids


class ModelServer:
    """The state behind the app: config, metrics, the model store, the prediction log and the shadow worker."""

    def __init__(self, config: ServeConfig, *, prediction_log: Any | None = None,
                 client: Callable[[], MlflowClient] | None = None) -> None:
        self.config = config
        self.prediction_log = prediction_log
        self.metrics = ServingMetrics(self._log_stats)
        self._storage_options: dict[str, Any] | None = None
        if config.predictions_url:  # the newest drift windows of the served versions, as gauges
            from crispflow.monitoring.gauges import DriftCollector
            from crispflow.predictions.store import storage_options_from_env

            self._storage_options = config.storage_options or storage_options_from_env(config.predictions_url)
            self.metrics.registry.register(DriftCollector(config.predictions_url, config.model,
                                                          storage_options=self._storage_options))
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
            from crispflow.predictions.writer import PredictionLog

            self.prediction_log = PredictionLog(self.config.predictions_url, self.config.model,
                                                flush_interval=self.config.log_flush_interval,
                                                storage_options=self._storage_options)
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
        prepared: list[PreparedRequest] = []
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

    def _prepare(self, slot: int, body: bytes, start: float, ts: datetime, snap: Snapshot) -> PreparedRequest:
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
        return PreparedRequest(slot, records, ids, entities, chosen, groups, allowed, start, ts, [0.0] * len(records))

    def _score(self, prepared: list[PreparedRequest], arms: Mapping[str, LoadedModel]) -> dict[int, ModelFailure]:
        """Fill every request's scores, one model call per arm; if a batched call fails, each request is scored
        alone so that only the requests the model fails on get a ModelFailure (slot → failure)."""
        by_alias: dict[str, list[tuple[PreparedRequest, list[int]]]] = {}
        for p in prepared:
            for alias, index in p.groups.items():
                by_alias.setdefault(alias, []).append((p, index))
        failures: dict[int, ModelFailure] = {}
        for alias, parts in by_alias.items():
            model = arms[alias]
            try:
                score_parts(model, parts)
                continue
            except Exception as exc:
                if len(parts) == 1:
                    self._model_failed(alias, model, parts[0], exc, failures)
                    continue
            for part in parts:  # the batch failed: find the culprits
                if part[0].slot in failures:
                    continue
                try:
                    score_parts(model, [part])
                except Exception as exc:
                    self._model_failed(alias, model, part, exc, failures)
        return failures

    def _model_failed(self, alias: str, model: LoadedModel, part: tuple[PreparedRequest, list[int]], exc: Exception,
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

    def _finish(self, p: PreparedRequest, snap: Snapshot) -> dict[str, Any]:
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
