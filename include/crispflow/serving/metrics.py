"""The model server's Prometheus metrics, in a registry of its own (one per app, so tests can run several).

Every per-model series carries a `model` label (the registered model name; "" on endpoints of no model such as
/health). Per arm (`model`, `version`, `alias`): records scored, request latency and score distribution (binary
P(positive), multiclass P(predicted class); regression predictions are not observed: their scale is the
target's). Per model: validation failures (by rule), reloads, refused loads (hash mismatch, bad metadata,
unavailable registry), feedback, served versions and readiness. Per kind: errors. The prediction logs' counters
(written, dropped, pending) and the drift gauges of each model are read at scrape time. Explanations: per loaded
(`model`, `version`), the explainer's state (`crispflow_serve_explainer{status}`: 1 for its state, 0 for the
others, so an alert on `status="ready"` has a series) and the records explained. Scoring: per loaded (`model`,
`version`), which scorer answers (`crispflow_serve_scorer{kind}`: 1 for `compiled` or `pipeline`, 0 for the other;
`pipeline` means the compiled scorer could not be built or disagreed with the model, see /model for why).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ERROR_KINDS = ("model", "internal", "shadow", "poll", "log", "queue_full", "explainer")  # crispflow_serve_errors
# LoadedModel.explainer_state (models.py): the `status` label of crispflow_serve_explainer
EXPLAINER_STATES = ("ready", "none", "unavailable", "hash_mismatch", "invalid", "self_test_failed")
RECORD_RULES = ("missing", "type", "finite", "class", "extra")  # a record's first broken rule (validation.py)
SCORER_KINDS = ("compiled", "pipeline")  # LoadedModel.scorer_kind: the `kind` label of crispflow_serve_scorer
REFUSAL_REASONS = ("hash_mismatch", "invalid", "unavailable")  # models.RefusedModel.reason
# 0.5-2 ms in fine steps: a compiled scorer answers a 1-record request in about 1 ms server-side
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 21))


LogStats = Callable[[], "Mapping[str, float] | Mapping[str, Mapping[str, float]] | None"]


class _PredictionLogCollector(Collector):
    """Reads `written`, `dropped` and `pending` of the prediction logs when scraped: `source` returns one log's
    counters, or counters per model (then each series has a `model` label)."""

    def __init__(self, source: LogStats) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        values = self._source() or {}
        per_model = {m: v for m, v in values.items() if isinstance(v, Mapping)}
        single = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
        for name, kind, text in (("written", "counter", "prediction rows written to the prediction store"),
                                 ("dropped", "counter", "prediction rows dropped because the log was full"),
                                 ("pending", "gauge", "prediction rows waiting to be written")):
            metric = f"crispflow_serve_prediction_log_{name}"
            labels = ["model"] if per_model else []
            family = CounterMetricFamily(metric, text, labels=labels) if kind == "counter" \
                else GaugeMetricFamily(metric, text, labels=labels)
            found = False
            if name in single:
                family.add_metric([], float(single[name]))
                found = True
            for model, stats in sorted(per_model.items()):
                if name in stats:
                    family.add_metric([model], float(stats[name]))
                    found = True
            if found:
                yield family


class _DriftCollectors(Collector):
    """The drift gauges of every served model in one set of families, each series labelled with its `model`
    (each model's `DriftCollector` alone would repeat the same family names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, Collector] = {}

    def add(self, model: str, collector: Collector) -> None:
        with self._lock:
            self._by_model.setdefault(model, collector)

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        with self._lock:
            collectors = sorted(self._by_model.items())
        merged: dict[str, Any] = {}
        for model, collector in collectors:
            for family in collector.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type)
                out.samples.extend(Sample(s.name, {"model": model, **s.labels}, s.value, s.timestamp, s.exemplar)
                                   for s in family.samples)
        yield from merged.values()


class ServingMetrics:
    """All metrics of one server. `log_stats` returns the prediction logs' counters (None while there are none)."""

    def __init__(self, log_stats: LogStats = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("crispflow_serve_requests", "HTTP requests by model, endpoint and status code",
                                ["model", "endpoint", "code"], registry=reg)
        self.records = Counter("crispflow_serve_predictions", "records scored, by model, version and alias",
                               ["model", "version", "alias"], registry=reg)
        self.latency = Histogram("crispflow_serve_request_latency_seconds",
                                 "time to answer a /predict request, by the model, version and alias that served it",
                                 ["model", "version", "alias"], buckets=LATENCY_BUCKETS, registry=reg)
        self.scores = Histogram("crispflow_serve_score",
                                "probability returned (binary: positive class; multiclass: predicted class)",
                                ["model", "version", "alias"], buckets=SCORE_BUCKETS, registry=reg)
        self.errors = Counter("crispflow_serve_errors", "server-side errors by kind (model, internal, shadow, poll)",
                              ["kind"], registry=reg)
        for kind in ERROR_KINDS:  # known kinds start at 0 (see add_model)
            self.errors.labels(kind)
        self.validation_failures = Counter("crispflow_serve_validation_failures",
                                           "rejected requests by model and the first rule broken",
                                           ["model", "rule"], registry=reg)
        self.reloads = Counter("crispflow_serve_reloads", "alias switches to a newly served version",
                               ["model", "alias"], registry=reg)
        self.refused_loads = Counter("crispflow_serve_refused_loads",
                                     "model versions not loaded, by reason (hash_mismatch, invalid, unavailable)",
                                     ["model", "reason"], registry=reg)
        self.shadow_dropped = Counter("crispflow_serve_shadow_dropped", "mirrored records dropped (queue full)",
                                      ["model"], registry=reg)
        self.feedback = Counter("crispflow_serve_feedback", "feedback labels accepted", ["model"], registry=reg)
        self.served = Gauge("crispflow_serve_model_info", "1 for each (model, alias, version) being served",
                            ["model", "alias", "version"], registry=reg)
        self.ready = Gauge("crispflow_serve_ready", "1 when the model's champion is loaded", ["model"],
                           registry=reg)
        self.models = Gauge("crispflow_serve_models", "registered models the server knows, by state "
                            "(loaded, idle: discovered but not in memory)", ["state"], registry=reg)
        self.explainer = Gauge("crispflow_serve_explainer", "1 for the explainer state of each loaded model version "
                               "(ready, none, unavailable, hash_mismatch, invalid, self_test_failed), 0 for the others",
                               ["model", "version", "status"], registry=reg)
        self.explained = Counter("crispflow_serve_explained_records", "records answered with an explanation",
                                 ["model", "version"], registry=reg)
        self.scorer = Gauge("crispflow_serve_scorer", "1 for the scorer answering each loaded model version "
                            "(compiled, or pipeline when the compiled scorer is unsupported or disagreed), 0 for the "
                            "other", ["model", "version", "kind"], registry=reg)
        reg.register(_PredictionLogCollector(log_stats))
        self.drift = _DriftCollectors()
        reg.register(self.drift)
        self._served_lock = threading.Lock()
        self._served: dict[str, dict[str, str]] = {}
        self._explainers: dict[str, set[str]] = {}  # model → versions with explainer series
        self._scorers: dict[str, set[str]] = {}  # model → versions with scorer series

    def add_model(self, model: str) -> None:
        """Start the per-model counters of `model` at 0 for their known labels, so that a dashboard panel or an
        alert rule over them has a series (0) before the first event, not "no data"."""
        for rule in RECORD_RULES:
            self.validation_failures.labels(model, rule)
        for reason in REFUSAL_REASONS:
            self.refused_loads.labels(model, reason)
        self.feedback.labels(model)
        self.shadow_dropped.labels(model)

    def set_served(self, model: str, served: Mapping[str, str], *, ready: bool | None = None) -> None:
        """Replace the (alias, version) info series of `model` by `served` (alias → version). `ready`: whether the
        model serves what it should (default: a champion is served); 0 fires CrispflowModelServerNotReady."""
        with self._served_lock:
            for alias, version in self._served.pop(model, {}).items():
                self.served.remove(model, alias, version)
            for alias, version in served.items():
                self.served.labels(model, alias, version).set(1)
            self._served[model] = dict(served)
            self.ready.labels(model).set(1 if (ready if ready is not None else "champion" in served) else 0)

    def set_explainers(self, model: str, states: Mapping[str, str]) -> None:
        """Replace the explainer series of `model` by `states` (loaded version → its explainer state)."""
        with self._served_lock:
            _replace_one_hot(self.explainer, EXPLAINER_STATES, self._explainers, model, states)
            for version, state in states.items():
                if state == "ready":
                    self.explained.labels(model, version)

    def set_scorers(self, model: str, kinds: Mapping[str, str]) -> None:
        """Replace the scorer series of `model` by `kinds` (loaded version → compiled or pipeline)."""
        with self._served_lock:
            _replace_one_hot(self.scorer, SCORER_KINDS, self._scorers, model, kinds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _replace_one_hot(gauge: Any, values: Sequence[str], kept: dict[str, set[str]], model: str,
                     chosen: Mapping[str, str]) -> None:
    """Replace `model`'s series of a one-hot state gauge labelled (model, version, value): drop the versions kept
    from last time, then set 1 for each version's chosen value and 0 for the others."""
    for version in kept.pop(model, set()):
        for value in values:
            gauge.remove(model, version, value)
    for version, state in chosen.items():
        for value in values:
            gauge.labels(model, version, value).set(1 if value == state else 0)
    kept[model] = set(chosen)
