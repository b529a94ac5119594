"""One served model (`ModelServer`): predict, feedback and describe of one registered model, with its own model
store (aliases, traffic policy, loaded versions), scoring thread (batcher.py), shadow worker (shadow.py) and
prediction log folder (`<predictions root>/<model>/`). The fleet (fleet.py) holds one per registered model.

A batch of /predict requests is scored against one snapshot of the served models: each request's records are
validated against their arm's signature (arm from policy.py), then each arm scores the records of the whole batch
in one model call. Ids, validation, metrics and logging stay per request, and one request's bad input or model
failure never fails another. The prediction rows are queued to the prediction log before the response is returned
(never waiting on I/O), so a clean shutdown (SIGTERM → uvicorn drains requests → lifespan shutdown → logs closed)
loses no answered prediction. The threads and the log of a model start on its first request: a model nobody
calls costs no thread.

Explanations (`/predict?explain=true&top_k=k`): only the requests that ask are explained, each record by the arm
that answered it (champion or canary; shadow arms never), one explainer call per arm and top_k over the batch,
after the model calls. An answering version without a working explainer refuses the request with 409 naming the
version and its explainer status; an explanation that is not additive within the record's tolerance fails its
request (500), it is never served. An explained record's log row holds its explanation as JSON text (column
`explanation`): these are personal data (reasons about a person's application), under the same retention and
erasure as the row's `feature.*` columns. Requests that do not ask cost nothing extra."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError
from crispflow.governance.pseudonyms import canonical_text
from crispflow.governance.stored_form import record_form
from crispflow.serving.batcher import Arrival, Batcher, PreparedRequest, explain_parts, request_ids, score_parts
from crispflow.serving.models import LoadedModel, ModelStore, Snapshot, load_version
from crispflow.serving.policy import CANARY, SHADOW
from crispflow.serving.shadow import ShadowWorker
from crispflow.serving.validation import (
    ExplainRequest,
    LabelRule,
    PayloadError,
    check_explained_records,
    feedback_pairs,
    parse_json,
    problem,
    records_of,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.serving.config import ServeConfig
    from crispflow.serving.metrics import ServingMetrics

log = logging.getLogger("crispflow.serving")
LogFactory = Callable[[str], Any]  # model name → a started-or-not PredictionLog-like object


class NotReady(CrispflowError):
    """No champion is loaded (yet)."""


class ModelFailure(CrispflowError):
    """The model raised while scoring valid input: a real server error (500)."""

    rule = "model_error"
    what = "model"

    def __init__(self, alias: str, version: str, exc: Exception, request_ids: list[str]) -> None:
        super().__init__(f"the {alias} {self.what} (v{version}) failed: {type(exc).__name__}")
        self.request_ids = request_ids


class ExplanationFailure(ModelFailure):
    """The explainer raised, or gave a non-additive explanation, on a scored request: 500, no wrong reasons."""

    rule = "explainer_error"
    what = "model's explainer"


class ModelServer:
    """One registered model behind the app: its store, scoring thread, shadow worker and prediction log."""

    def __init__(self, name: str, config: ServeConfig, metrics: ServingMetrics,
                 client: Callable[[], MlflowClient], *, log_factory: LogFactory | None = None,
                 reload: Callable[[], object] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.config = config
        self.metrics = metrics
        self.prediction_log: Any | None = None
        self._log_factory = log_factory
        self._reload = reload  # loads the model again after the fleet unloaded it (a request was on its way)
        metrics.add_model(name)
        if config.predictions_url:  # the newest drift windows of the model, as gauges on /metrics
            from crispflow.monitoring.gauges import DriftCollector

            metrics.drift.add(name, DriftCollector(config.predictions_url, name, storage_options=storage_options))
        trusted = tuple(config.trusted.get(name, ()))
        self.store = ModelStore(name, client, poll_interval=config.poll_interval,
                                refused_retry=config.refused_retry, metrics=metrics,
                                loader=functools.partial(load_version, trusted=trusted) if trusted else load_version)
        self.shadow = ShadowWorker(name, self._log, metrics, config.shadow_queue)
        self.batcher = Batcher(self.predict_batch, config.batch_requests, config.max_queue)
        self._storage_options = storage_options
        # request ids this process answered → their label (None: none yet), newest last, at most feedback_ids
        self._recent: OrderedDict[str, float | None] = OrderedDict()
        self._ids_lock = threading.Lock()  # `_recent`, and the check-then-log of /feedback labels
        self._lock = threading.Lock()  # the closed flag, the log and the batcher/shadow swap of `release`
        self._closed = False
        self._closed_logs = {"written": 0, "dropped": 0}  # counters of logs closed by `release`

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def submit(self, body: bytes, explain: ExplainRequest | None = None) -> Future[dict[str, Any]] | None:
        """Queue a /predict body (and what it asks to explain) on this model's scoring thread (started on first
        use); None once closed (the caller then scores in its own thread)."""
        with self._lock:  # queued under the lock: `release` never closes a batcher that still gets work
            if self._closed:
                return None
            self.batcher.start()
            return self.batcher.submit(body, explain)

    def close(self) -> None:
        """Finish queued scoring and shadow work, flush the prediction log (SIGTERM reaches here via uvicorn)."""
        with self._lock:
            self._closed = True
        self.batcher.close(self.config.close_timeout)
        self.shadow.close(self.config.close_timeout)
        with self._lock:
            plog = self.prediction_log
        if plog is not None:
            plog.close(self.config.close_timeout)
            log.info("prediction log closed (%s): %s rows written, %s dropped", self.name, plog.written,
                     plog.dropped)

    def release(self) -> None:
        """Stop this model's threads and close its prediction log (the fleet unloaded the model): queued work is
        finished first, and everything starts again on the model's next request."""
        with self._lock:
            if self._closed:
                return
            batcher, shadow = self.batcher, self.shadow
            self.batcher = Batcher(self.predict_batch, self.config.batch_requests, self.config.max_queue)
            self.shadow = ShadowWorker(self.name, self._log, self.metrics, self.config.shadow_queue)
        batcher.close(self.config.close_timeout)
        shadow.close(self.config.close_timeout)
        with self._lock:
            plog, self.prediction_log = self.prediction_log, None
        if plog is not None:
            plog.close(self.config.close_timeout)
            with self._lock:
                self._closed_logs["written"] += plog.written
                self._closed_logs["dropped"] += plog.dropped

    def _plog_locked(self) -> Any | None:
        """The prediction log, created and started on first use (None when logging is off); hold `_lock`."""
        if self.prediction_log is None and self._log_factory is not None and not self._closed:
            plog = self._log_factory(self.name)
            plog.start()
            self.prediction_log = plog
        return self.prediction_log

    def log_stats(self) -> dict[str, float] | None:
        """The prediction log's counters (those of logs closed by `release` included); None before any log."""
        with self._lock:
            plog, closed = self.prediction_log, dict(self._closed_logs)
        if plog is None and not any(closed.values()):
            return None
        if plog is None:
            return {**closed, "pending": 0}
        return {"written": closed["written"] + plog.written, "dropped": closed["dropped"] + plog.dropped,
                "pending": plog.pending}

    def _log(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            with self._lock:  # log() only appends: holding the lock keeps `release` from closing it meanwhile
                plog = self._plog_locked()
                if plog is not None:
                    plog.log(rows)
        except Exception:  # logging must never fail a request
            log.exception("prediction log of %s refused %d rows", self.name, len(rows))
            self.metrics.errors.labels("log").inc()

    # --- predict -----------------------------------------------------------------------------------------------

    def predict(self, body: bytes, explain: ExplainRequest | None = None) -> dict[str, Any]:
        """Parse, validate, score, explain if asked, log. Raises PayloadError (4xx: 409 when the answering version
        cannot explain), NotReady (503) or ModelFailure (500)."""
        arrival: Arrival = (body, time.perf_counter(), datetime.now(UTC)) if explain is None \
            else (body, time.perf_counter(), datetime.now(UTC), explain)
        outcome = self.predict_batch([arrival])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def predict_batch(self, requests: Sequence[Arrival]) -> list[dict[str, Any] | Exception]:
        """Score several requests together against ONE snapshot: each arm scores the valid records of all of them
        in one model call (then explains those of the requests that asked, one call per arm and top_k). Returns,
        per request and in order, its response or its exception (PayloadError, NotReady, ModelFailure): a request
        never fails because of another one in the batch."""
        snap = self.snapshot()
        outcomes: list[dict[str, Any] | Exception | None] = [None] * len(requests)
        prepared: list[PreparedRequest] = []
        explained = False
        for slot, arrival in enumerate(requests):
            explain = arrival[3] if len(arrival) > 3 else None  # type: ignore[misc]
            try:
                prepared.append(self._prepare(slot, arrival[0], arrival[1], arrival[2], snap, explain))
            except (PayloadError, NotReady) as exc:
                outcomes[slot] = exc
            explained = explained or explain is not None
        if prepared:
            failures = self._score(prepared, snap.arms)
            if explained:
                self._explain(prepared, snap.arms, failures)
            for p in prepared:
                outcomes[p.slot] = failures.get(p.slot) or self._finish(p, snap)
        return outcomes  # type: ignore[return-value]

    def snapshot(self) -> Snapshot:
        """The served models now; loaded again first if the fleet unloaded this model after a request for it was
        routed here (so the LRU never fails a request)."""
        snap = self.store.snapshot
        if snap.champion is None and self.store.unloaded and self._reload is not None:
            self._reload()
            snap = self.store.snapshot
        return snap

    def _prepare(self, slot: int, body: bytes, start: float, ts: datetime, snap: Snapshot,
                 explain: ExplainRequest | None = None) -> PreparedRequest:
        """Parse and validate one request, and assign each record an arm (PayloadError / NotReady if it cannot)."""
        records = records_of(parse_json(body), self.config.max_records)
        if explain is not None:
            check_explained_records(records, self.config.max_explained_records)
        if snap.champion is None:
            raise NotReady(snap.not_ready or "no champion loaded")
        name, policy, arms = self.name, snap.policy, snap.arms
        ids = request_ids(len(records))
        has_canary = CANARY in arms
        entities = [policy.entity_of(r) if isinstance(r, dict) else None for r in records]
        chosen = [policy.arm(name, e, rid, has_canary=has_canary) for e, rid in zip(entities, ids, strict=True)]
        allowed = (policy.entity_key,) if policy.entity_key else ()
        problems = [p for i, r in enumerate(records) for p in arms[chosen[i]].schema.check_record(i, r, allowed)]
        if problems:
            raise PayloadError(422, problems)
        records, entities = self._stored_form(records, chosen, arms, policy.entity_key)
        groups: dict[str, list[int]] = {}
        for i, alias in enumerate(chosen):
            groups.setdefault(alias, []).append(i)
        top_k = None if explain is None else self._top_k(explain, groups, arms)
        return PreparedRequest(slot, records, ids, entities, chosen, groups, allowed, start, ts, [0.0] * len(records),
                               top_k)

    def _stored_form(self, records: list[Any], chosen: list[str], arms: Mapping[str, LoadedModel],
                     entity_key: str | None) -> tuple[list[dict[str, Any]], list[str | None]]:
        """The records as the models were trained on them and as they are logged: each arm's pseudonymised
        features as keyed pseudonyms (under the key of its training data), the entity key as its pseudonym under
        the current key. Without keys the entity is not logged at all, and an arm trained on pseudonyms cannot
        answer (NotReady)."""
        keys = self.config.pseudonyms
        out: list[dict[str, Any]] = []
        entities: list[str | None] = []
        for record, alias in zip(records, chosen, strict=True):
            model = arms[alias]
            if keys is None:
                if model.pseudonymised:
                    raise NotReady(f"{self.name} v{model.version} takes pseudonymised {sorted(model.pseudonymised)}, "
                                   "but this server has no pseudonym keys ($CRISPFLOW_PSEUDONYM_KEYS)")
                out.append({k: v for k, v in record.items() if k != entity_key})
                entities.append(None)
                continue
            stored = record_form(model.pseudonymised, record, keys, model.pseudonym_key)
            entity = record.get(entity_key) if entity_key else None
            if entity is not None:
                stored[entity_key] = keys.pseudonym(canonical_text(entity))
            out.append(stored)
            entities.append(stored.get(entity_key) if entity_key else None)
        return out, entities

    def _top_k(self, explain: ExplainRequest, groups: Mapping[str, list[int]],
               arms: Mapping[str, LoadedModel]) -> dict[str, int]:
        """Per answering arm, the contributions to list: 422 if `top_k` exceeds the arm's number of features, 409
        if the arm's version has no working explainer (checked after the request's own errors)."""
        top_k = {alias: explain.resolve(arms[alias].n_features, f"{self.name} v{arms[alias].version}")
                 for alias in groups}
        unable = [alias for alias in groups if arms[alias].explainer is None]
        if unable:
            raise PayloadError(409, [problem(None, "explain", "explainer_unavailable",
                                             f"{self.name} v{arms[a].version} ({a}) cannot explain its predictions: "
                                             f"{arms[a].explainer_status}") for a in unable])
        return top_k

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

    def _explain(self, prepared: list[PreparedRequest], arms: Mapping[str, LoadedModel],
                 failures: dict[int, ModelFailure]) -> None:
        """Explain the records of the scored requests that asked, one explainer call per (arm, top_k); if a batched
        call fails, each request is explained alone so that only the culprits get an ExplanationFailure."""
        jobs: dict[tuple[str, int], list[tuple[PreparedRequest, list[int]]]] = {}
        for p in prepared:
            if p.top_k is None or p.slot in failures:
                continue
            for alias, index in p.groups.items():
                jobs.setdefault((alias, p.top_k[alias]), []).append((p, index))
        for (alias, top_k), parts in jobs.items():
            model = arms[alias]
            try:
                explain_parts(model, parts, top_k)
                continue
            except Exception as exc:
                if len(parts) == 1:
                    self._model_failed(alias, model, parts[0], exc, failures, ExplanationFailure)
                    continue
            for part in parts:
                if part[0].slot in failures:
                    continue
                try:
                    explain_parts(model, [part], top_k)
                except Exception as exc:
                    self._model_failed(alias, model, part, exc, failures, ExplanationFailure)

    def _model_failed(self, alias: str, model: LoadedModel, part: tuple[PreparedRequest, list[int]], exc: Exception,
                      failures: dict[int, ModelFailure], kind: type[ModelFailure] = ModelFailure) -> None:
        p, index = part
        log.error("%s %s v%s: the %s failed on %d valid records", self.name, alias, model.version, kind.what,
                  len(index), exc_info=exc)
        self.metrics.errors.labels("model" if kind is ModelFailure else "explainer").inc()
        latency_ms = (time.perf_counter() - p.start) * 1000
        self._log([self._row(p.ids[i], p.ts, model, alias, p.entities[i], {"score": None}, latency_ms, "error",
                             p.records[i])
                   for i in index])
        failure = kind(alias, model.version, exc, p.ids)
        failure.__cause__ = exc
        failures[p.slot] = failure

    def _finish(self, p: PreparedRequest, snap: Snapshot) -> dict[str, Any]:
        """Metrics, response items, prediction log rows and shadow mirroring of one scored request."""
        name, policy, arms = self.name, snap.policy, snap.arms
        records, ids, outputs, chosen = p.records, p.ids, p.scores, p.chosen
        elapsed = time.perf_counter() - p.start
        logged = [arms[a].logged(outputs[i]) for i, a in enumerate(chosen)]
        for alias, index in p.groups.items():
            model = arms[alias]
            self.metrics.records.labels(name, model.version, alias).inc(len(index))
            self.metrics.latency.labels(name, model.version, alias).observe(elapsed)
            if model.task != "regression":  # probabilities only: a regression's scale is its target's
                observe = self.metrics.scores.labels(name, model.version, alias).observe
                for i in index:
                    observe(logged[i]["score"])
        items = []
        for i, alias in enumerate(chosen):
            model = arms[alias]
            items.append({"request_id": ids[i], **model.answer(outputs[i]), "model_version": model.version,
                          "alias": alias})
        latency_ms = elapsed * 1000
        if p.explanations is None:
            self._log([self._row(ids[i], p.ts, arms[a], a, p.entities[i], logged[i], latency_ms, "ok", records[i])
                       for i, a in enumerate(chosen)])
        else:
            self._explained(p, arms, items, logged, latency_ms)
        self._remember(ids)
        shadow = arms.get(SHADOW)
        if shadow is not None and policy.shadow_share > 0:
            mirrored = [i for i, rid in enumerate(ids) if policy.mirrored(name, rid, has_shadow=True)]
            served_as = {a: arms[a].stored_as for a in p.groups}  # the shadow takes records of its own form only
            mirrored = [i for i in mirrored if served_as[chosen[i]] == shadow.stored_as]
            if mirrored:
                self.shadow.submit((shadow, [records[i] for i in mirrored], [ids[i] for i in mirrored],
                                    [p.entities[i] for i in mirrored], p.ts, p.allowed))
        return {"model": name, "predictions": items}

    def _explained(self, p: PreparedRequest, arms: Mapping[str, LoadedModel], items: list[dict[str, Any]],
                   logged: list[dict[str, Any]], latency_ms: float) -> None:
        """The explanations of an explained request: in its response items, its log rows (JSON text: personal
        data, see the module docstring) and the explained-records counter."""
        explanations, texts = p.explanations, p.explanation_texts
        assert explanations is not None and texts is not None
        rows = []
        for i, alias in enumerate(p.chosen):
            items[i]["explanation"] = explanations[i]
            row = self._row(p.ids[i], p.ts, arms[alias], alias, p.entities[i], logged[i], latency_ms, "ok",
                            p.records[i])
            row["explanation"] = texts[i]
            rows.append(row)
        self._log(rows)
        for alias, index in p.groups.items():
            self.metrics.explained.labels(self.name, arms[alias].version).inc(len(index))

    def _row(self, request_id: str, ts: datetime, model: LoadedModel, alias: str, entity: str | None,
             output: Mapping[str, Any], latency_ms: float, status: str, record: dict[str, Any]) -> dict[str, Any]:
        return {"request_id": request_id, "ts": ts, "model": self.name, "version": model.version,
                "alias": alias, "served": True, "entity": entity, **output, "latency_ms": latency_ms,
                "status": status, "features": record}

    # --- feedback and describe ---------------------------------------------------------------------------------

    def label_rule(self, champion: LoadedModel) -> LabelRule:
        """How this model's feedback labels are read: by the champion's task (binary: also the pipeline's own
        target values, from the config)."""
        positive, negative = self.config.feedback_labels.get(
            self.name, (self.config.positive_labels, self.config.negative_labels))
        return LabelRule(champion.task, tuple(positive), tuple(negative), champion.classes)

    def _remember(self, ids: list[str]) -> None:
        """Record answered request ids (they may take one /feedback label each), forgetting the oldest beyond
        `feedback_ids` (those are then looked up in the prediction log)."""
        recent, limit = self._recent, self.config.feedback_ids
        with self._ids_lock:
            for rid in ids:
                recent[rid] = None
            while len(recent) > limit:
                recent.popitem(last=False)

    def _lookup(self, ids: list[str]) -> tuple[set[str], dict[str, float]]:
        """(ids the prediction log holds an answered prediction for, their labels already stored), within
        `feedback_window` seconds: for ids this process no longer remembers (older, another replica, a restart)."""
        from crispflow.predictions.reader import known_requests

        now = datetime.now(UTC)
        return known_requests(self.config.predictions_url, self.name, ids,
                              now - timedelta(seconds=self.config.feedback_window), now + timedelta(minutes=5),
                              storage_options=self._storage_options)

    def feedback(self, body: bytes, sender: str | None = None) -> int:
        """Validate the labels per the champion's task and store them with `sender` (the token's name) in the
        prediction log: only for request ids the server answered, one label per request (409 for a different
        second label; an identical one is accepted and not stored again). Returns the number of labels accepted."""
        if self._log_factory is None and self.prediction_log is None:
            raise NotReady("the prediction log is disabled: feedback cannot be stored")
        champion = self.snapshot().champion
        if champion is None:
            raise NotReady(f"{self.name}: no champion is loaded, so the task its feedback labels follow is unknown "
                           f"({self.store.snapshot.not_ready or 'not loaded'})")
        pairs = feedback_pairs(parse_json(body), self.config.max_records, self.label_rule(champion))
        wanted: dict[str, float] = {}
        index: dict[str, int] = {}
        conflicts: list[dict[str, Any]] = []
        for i, (rid, label) in enumerate(pairs):
            if rid in wanted and wanted[rid] != label:
                conflicts.append(problem(i, "label", "one_label", f"request {rid} is given two different labels "
                                                                  "in this body"))
            wanted.setdefault(rid, label)
            index.setdefault(rid, i)
        if conflicts:
            raise PayloadError(409, conflicts)
        with self._ids_lock:
            missing = [rid for rid in wanted if rid not in self._recent]
        stored: dict[str, float] = {}
        if missing:
            found, stored = self._lookup(missing)
            unknown = [rid for rid in missing if rid not in found]
            if unknown:
                raise PayloadError(422, [problem(index[rid], "request_id", "unknown_request",
                                                 f"{rid} is not a request this model answered (in the last "
                                                 f"{self.config.feedback_window / 3600:g} h)") for rid in unknown])
        now = datetime.now(UTC)
        with self._ids_lock:
            current = {rid: self._recent[rid] if rid in self._recent else stored.get(rid) for rid in wanted}
            conflicts = [problem(index[rid], "label", "one_label",
                                 f"request {rid} already has a different label (one label per request)")
                         for rid, label in wanted.items() if current[rid] is not None and current[rid] != label]
            if conflicts:
                raise PayloadError(409, conflicts)
            new = [(rid, label) for rid, label in wanted.items() if current[rid] is None]
            if new:
                with self._lock:
                    plog = self._plog_locked()
                    if plog is None:
                        raise NotReady("the prediction log is closed: feedback cannot be stored")
                    plog.log_feedback([{"request_id": rid, "label": label, "ts": now, "sender": sender}
                                       for rid, label in new])
                for rid, label in new:  # looked-up ids too: a second label must not race the log's flush
                    self._recent[rid] = label
                while len(self._recent) > self.config.feedback_ids:
                    self._recent.popitem(last=False)
        self.metrics.feedback.labels(self.name).inc(len(new))
        if new:
            log.info("feedback: %d labels for %s from token %r", len(new), self.name, sender)
        return len(wanted)

    def describe(self) -> dict[str, Any]:
        plog = self.prediction_log
        snap = self.store.snapshot
        root = getattr(plog, "root", None) if plog is not None else None
        return {"model": self.name, "task": snap.champion.task if snap.champion else None, **snap.describe(),
                "limits": {"max_body_bytes": self.config.max_body_bytes, "max_records": self.config.max_records,
                           "max_explained_records": self.config.max_explained_records},
                "poll_interval": self.config.poll_interval,
                "prediction_log": None if self._log_factory is None and plog is None
                else {"root": root, **(self.log_stats() or {})}}
