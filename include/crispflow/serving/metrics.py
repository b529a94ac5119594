"""The model server's Prometheus metrics, in a registry of its own (one per app, so tests can run several).

Per arm (`version`, `alias`): records scored, request latency and score distribution. Per kind: errors,
validation failures (by rule), model reloads, refused loads (hash mismatch, bad metadata, unavailable registry).
The prediction log's own counters (written, dropped, pending) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 21))


class _PredictionLogCollector(Collector):
    """Reads `written`, `dropped` and `pending` of the prediction log (or the shadow queue) when scraped."""

    def __init__(self, source: Callable[[], dict[str, float] | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        values = self._source() or {}
        for name, kind, text in (("written", "counter", "prediction rows written to the prediction store"),
                                 ("dropped", "counter", "prediction rows dropped because the log was full"),
                                 ("pending", "gauge", "prediction rows waiting to be written")):
            if name not in values:
                continue
            metric = f"crispflow_serve_prediction_log_{name}"
            family = CounterMetricFamily(metric, text) if kind == "counter" else GaugeMetricFamily(metric, text)
            family.add_metric([], float(values[name]))
            yield family


class ServingMetrics:
    """All metrics of one server. `log_stats` returns the prediction log's counters (None while it has none)."""

    def __init__(self, log_stats: Callable[[], dict[str, float] | None] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("crispflow_serve_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=reg)
        self.records = Counter("crispflow_serve_predictions", "records scored, by model version and alias",
                               ["version", "alias"], registry=reg)
        self.latency = Histogram("crispflow_serve_request_latency_seconds",
                                 "time to answer a /predict request, by the version and alias that served it",
                                 ["version", "alias"], buckets=LATENCY_BUCKETS, registry=reg)
        self.scores = Histogram("crispflow_serve_score", "positive-class probability returned, by version and alias",
                                ["version", "alias"], buckets=SCORE_BUCKETS, registry=reg)
        self.errors = Counter("crispflow_serve_errors", "server-side errors by kind (model, internal, shadow, poll)",
                              ["kind"], registry=reg)
        self.validation_failures = Counter("crispflow_serve_validation_failures",
                                           "rejected requests by the first rule broken", ["rule"], registry=reg)
        self.reloads = Counter("crispflow_serve_reloads", "alias switches to a newly served version", ["alias"],
                               registry=reg)
        self.refused_loads = Counter("crispflow_serve_refused_loads",
                                     "model versions not loaded, by reason (hash_mismatch, invalid, unavailable)",
                                     ["reason"], registry=reg)
        self.shadow_dropped = Counter("crispflow_serve_shadow_dropped", "mirrored records dropped (queue full)",
                                      registry=reg)
        self.feedback = Counter("crispflow_serve_feedback", "feedback labels accepted", registry=reg)
        self.served = Gauge("crispflow_serve_model_info", "1 for each (alias, version) being served",
                            ["alias", "version"], registry=reg)
        self.ready = Gauge("crispflow_serve_ready", "1 when a champion is loaded", registry=reg)
        reg.register(_PredictionLogCollector(log_stats))

    def set_served(self, served: dict[str, str]) -> None:
        """Replace the (alias, version) info series by `served` (alias → version)."""
        self.served.clear()
        for alias, version in served.items():
            self.served.labels(alias, version).set(1)
        self.ready.set(1 if "champion" in served else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
