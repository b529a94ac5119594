"""The OTLP → Prometheus bridge on OTLP protobuf messages built here (names, counters, gauges, delta and cumulative
totals, exponential → fixed buckets, labels), and the alert inbox (webhook validation, JSONL round trip)."""

from __future__ import annotations

import copy
import json
import math
import stat
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crispflow.monitoring.alert_inbox import AlertInbox, AlertInboxError, AlertPayloadError, parse_webhook
from crispflow.monitoring.otlp_bridge import (
    DEFAULT_BUCKETS_MS,
    MetricsBridge,
    OtlpDecodeError,
    counter_name,
    decode_request,
    exponential_upper_bound,
    label_name,
    metric_name,
    rebucket,
)

DELTA = pb.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE


# --- message builders -------------------------------------------------------------------------------------------


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any(v) for v in value]))
    return AnyValue(string_value=value)


def _kv(attrs: dict[str, Any] | None) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in (attrs or {}).items()]


def number(value: float, attrs: dict[str, Any] | None = None, start: int = 1, flags: int = 0) -> pb.NumberDataPoint:
    point = pb.NumberDataPoint(attributes=_kv(attrs), start_time_unix_nano=start, time_unix_nano=start + 1,
                               flags=flags)
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    return point


def sum_metric(name: str, *points: pb.NumberDataPoint, temporality: int = DELTA, monotonic: bool = True) -> pb.Metric:
    return pb.Metric(name=name, sum=pb.Sum(data_points=points, aggregation_temporality=temporality,
                                           is_monotonic=monotonic))


def gauge_metric(name: str, *points: pb.NumberDataPoint) -> pb.Metric:
    return pb.Metric(name=name, gauge=pb.Gauge(data_points=points))


def exp_point(*, scale: int, offset: int, counts: list[int], zero: int = 0, total: float = 0.0,
              attrs: dict[str, Any] | None = None, start: int = 1) -> pb.ExponentialHistogramDataPoint:
    buckets = pb.ExponentialHistogramDataPoint.Buckets(offset=offset, bucket_counts=counts)
    return pb.ExponentialHistogramDataPoint(attributes=_kv(attrs), start_time_unix_nano=start, count=sum(counts) + zero,
                                            sum=total, scale=scale, zero_count=zero, positive=buckets)


def exp_metric(name: str, *points: pb.ExponentialHistogramDataPoint, temporality: int = DELTA) -> pb.Metric:
    return pb.Metric(name=name, unit="ms", exponential_histogram=pb.ExponentialHistogram(
        data_points=points, aggregation_temporality=temporality))


def hist_metric(name: str, bounds: list[float], counts: list[int], total: float, *, temporality: int = DELTA,
                attrs: dict[str, Any] | None = None, start: int = 1) -> pb.Metric:
    point = pb.HistogramDataPoint(attributes=_kv(attrs), start_time_unix_nano=start, count=sum(counts), sum=total,
                                  bucket_counts=counts, explicit_bounds=bounds)
    return pb.Metric(name=name, histogram=pb.Histogram(data_points=[point], aggregation_temporality=temporality))


def request(*metrics: pb.Metric, resource: dict[str, Any] | None = None) -> ExportMetricsServiceRequest:
    resource = {"service.name": "airflow"} if resource is None else resource
    return ExportMetricsServiceRequest(resource_metrics=[pb.ResourceMetrics(
        resource=Resource(attributes=_kv(resource)),
        scope_metrics=[pb.ScopeMetrics(metrics=metrics)])])


def scrape(bridge: MetricsBridge) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], dict[str, str]]:
    """(sample name, labels) → value, and family name → type, as Prometheus would parse the exposition."""
    registry = CollectorRegistry()
    registry.register(bridge)
    samples, types = {}, {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(bridge: MetricsBridge, name: str, **labels: str) -> float:
    return scrape(bridge)[0][(name, frozenset({"service": "airflow", **labels}.items()))]


# --- names and labels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("otel", "prom"), [
    ("airflow.ti_successes", "airflow_ti_successes"),
    ("airflow.ti.successes", "airflow_ti_successes"),
    ("airflow.executor.running_tasks", "airflow_executor_running_tasks"),
    ("airflow.dag.my-dag.task/1.duration", "airflow_dag_my_dag_task_1_duration"),
    ("a..b", "a_b"),
    ("1st.metric", "_1st_metric"),
    ("keeps:colons", "keeps:colons"),
])
def test_metric_names_follow_prometheus_otlp_translation(otel: str, prom: str) -> None:
    assert metric_name(otel) == prom


def test_counters_get_total_once() -> None:
    assert counter_name("airflow.ti_successes") == "airflow_ti_successes_total"
    assert counter_name("airflow.ti.failures") == "airflow_ti_failures_total"
    assert counter_name("requests_total") == "requests_total"
    assert counter_name("requests.total") == "requests_total"


@pytest.mark.parametrize(("key", "label"), [
    ("dag_id", "dag_id"), ("dag.id", "dag_id"), ("http-status", "http_status"), ("1x", "key_1x"),
    ("_private", "key_private"), ("__name__", "key__name__"), ("", "key_"),
])
def test_label_names_are_sanitised(key: str, label: str) -> None:
    assert label_name(key) == label


def test_attributes_become_labels_with_service_and_collisions_joined() -> None:
    bridge = MetricsBridge()
    attrs = {"dag.id": "a", "dag_id": "b", "try": 2, "ok": True, "hosts": ["h1", "h2"], "empty": ""}
    bridge.ingest(request(sum_metric("airflow.ti_successes", number(1, attrs))))
    samples, _ = scrape(bridge)
    labels = {"service": "airflow", "dag_id": "a;b", "try": "2", "ok": "true", "hosts": '["h1","h2"]'}
    assert samples == {("airflow_ti_successes_total", frozenset(labels.items())): 1.0}


def test_no_service_label_without_a_service_name() -> None:
    bridge = MetricsBridge()
    bridge.ingest(request(gauge_metric("g", number(4)), resource={}))
    assert scrape(bridge)[0] == {("g", frozenset()): 4.0}


# --- sums and gauges --------------------------------------------------------------------------------------------


def test_delta_counters_accumulate_across_processes() -> None:
    bridge = MetricsBridge()
    scheduler = {"service.name": "airflow", "process": "scheduler"}
    task = {"service.name": "airflow", "process": "task-1"}
    bridge.ingest(request(sum_metric("airflow.ti_successes", number(3, {"dag_id": "d"})), resource=scheduler))
    bridge.ingest(request(sum_metric("airflow.ti_successes", number(4, {"dag_id": "d"})), resource=task))
    bridge.ingest(request(sum_metric("airflow.ti_successes", number(2, {"dag_id": "d"})), resource=scheduler))
    bridge.ingest(request(sum_metric("airflow.ti_successes", number(5, {"dag_id": "e"})), resource=task))
    assert value(bridge, "airflow_ti_successes_total", dag_id="d") == 9
    assert value(bridge, "airflow_ti_successes_total", dag_id="e") == 5
    assert scrape(bridge)[1]["airflow_ti_successes"] == "counter"
    assert bridge.stream_count() == 0  # delta needs no per-stream state


def test_cumulative_counters_sum_the_latest_value_of_each_stream() -> None:
    bridge = MetricsBridge()
    first, second = {"service.name": "airflow", "pid": 1}, {"service.name": "airflow", "pid": 2}
    for cumulative, resource in ((5, first), (2, second), (8, first), (8, first), (3, second)):
        bridge.ingest(request(sum_metric("c", number(cumulative), temporality=CUMULATIVE), resource=resource))
    assert value(bridge, "c_total") == 11  # 8 (first) + 3 (second)
    # the first process restarts: a new start time is a new stream, its count adds to the total
    bridge.ingest(request(sum_metric("c", number(1, start=99), temporality=CUMULATIVE), resource=first))
    assert value(bridge, "c_total") == 12
    # a stream that goes down without a new start time restarted too: its whole value is new
    bridge.ingest(request(sum_metric("c", number(2, start=99), temporality=CUMULATIVE), resource=first))
    bridge.ingest(request(sum_metric("c", number(1, start=99), temporality=CUMULATIVE), resource=first))
    assert value(bridge, "c_total") == 14


def test_non_monotonic_sums_are_gauges_summed_over_streams() -> None:
    bridge = MetricsBridge()
    for resource, values in (({"service.name": "airflow", "pid": 1}, (2, 3)), ({"service.name": "airflow", "pid": 2},
                                                                               (4, 1))):
        for v in values:
            bridge.ingest(request(sum_metric("airflow.dag_processing.processes", number(v), temporality=CUMULATIVE,
                                             monotonic=False), resource=resource))
    assert value(bridge, "airflow_dag_processing_processes") == 4  # 3 + 1
    bridge.ingest(request(sum_metric("airflow.dag_processing.processes", number(-2), monotonic=False)))  # delta
    samples, types = scrape(bridge)
    assert types["airflow_dag_processing_processes"] == "gauge"
    assert samples[("airflow_dag_processing_processes", frozenset({("service", "airflow")}))] == 2


def test_gauges_keep_the_last_value_per_label_set() -> None:
    bridge = MetricsBridge()
    running = {"status": "running", "executor_class_name": "CeleryExecutor"}
    bridge.ingest(request(gauge_metric("airflow.executor.running_tasks", number(3, running)),
                          gauge_metric("airflow.executor.open_slots", number(29.0, {"status": "open"}))))
    bridge.ingest(request(gauge_metric("airflow.executor.running_tasks", number(5, running))))
    assert value(bridge, "airflow_executor_running_tasks", **running) == 5
    assert value(bridge, "airflow_executor_open_slots", status="open") == 29
    assert scrape(bridge)[1]["airflow_executor_running_tasks"] == "gauge"


def test_points_without_a_recorded_value_are_skipped() -> None:
    bridge = MetricsBridge()
    result = bridge.ingest(request(sum_metric("c", number(1), number(7, {"x": "y"}, flags=1))))
    assert result.accepted == 1
    assert value(bridge, "c_total") == 1
    assert ("c_total", frozenset({("service", "airflow"), ("x", "y")})) not in scrape(bridge)[0]


def test_conflicting_types_and_summaries_are_rejected_not_mixed() -> None:
    bridge = MetricsBridge()
    bridge.ingest(request(gauge_metric("m", number(1))))
    summary = pb.Metric(name="s", summary=pb.Summary(data_points=[pb.SummaryDataPoint(count=1, sum=2)]))
    result = bridge.ingest(request(sum_metric("m", number(5), monotonic=False, temporality=CUMULATIVE),
                                   exp_metric("m", exp_point(scale=0, offset=0, counts=[1])),
                                   exp_metric("m.count", exp_point(scale=0, offset=0, counts=[1])),
                                   gauge_metric("h.count", number(1)),
                                   exp_metric("h", exp_point(scale=0, offset=0, counts=[1])),
                                   summary, pb.Metric(name="nothing")))
    assert result.rejected == {"type_conflict": 2, "name_conflict": 1, "unsupported_summary": 1,
                               "unsupported_empty": 1}
    assert result.accepted == 2  # m.count (a histogram m_count: no clash with the gauge m) and h.count
    samples, _ = scrape(bridge)
    assert samples[("m", frozenset({("service", "airflow")}))] == 1
    assert samples[("h_count", frozenset({("service", "airflow")}))] == 1
    assert ("h_bucket", frozenset({("service", "airflow"), ("le", "+Inf")})) not in samples


# --- histograms -------------------------------------------------------------------------------------------------


def test_exponential_upper_bounds() -> None:
    assert exponential_upper_bound(0, 0) == 2  # scale 0: base 2, bucket 0 is (1, 2]
    assert exponential_upper_bound(0, -1) == 1
    assert exponential_upper_bound(1, 1) == pytest.approx(2)  # base √2, bucket 1 is (√2, 2]
    assert exponential_upper_bound(-1, 0) == 4  # base 4
    assert exponential_upper_bound(3, 10**6) == math.inf


def test_rebucket_is_conservative() -> None:
    bounds = (1.0, 5.0, 10.0)
    pairs = [(0.0, 1), (1.0, 2), (1.0000000001, 3), (4.2, 4), (5.1, 5), (11, 6), (math.inf, 7), (-3, 8)]
    assert rebucket(pairs, bounds) == [1 + 2 + 3 + 8, 4, 5, 6 + 7]


def test_exponential_histograms_map_onto_fixed_buckets_and_accumulate() -> None:
    bridge = MetricsBridge()
    # scale 0: buckets (1,2] (2,4] (4,8] from offset 0; (512,1024] is index 9; 2 zeros
    first = exp_point(scale=0, offset=0, counts=[1, 1, 1], zero=2, total=10.0, attrs={"dag_id": "d"})
    second = exp_point(scale=0, offset=9, counts=[3], total=2400.0, attrs={"dag_id": "d"})
    bridge.ingest(request(exp_metric("airflow.dag.d.t.duration", first)))
    bridge.ingest(request(exp_metric("airflow.dag.d.t.duration", second)))
    samples, types = scrape(bridge)
    assert types["airflow_dag_d_t_duration"] == "histogram"
    labels = {("service", "airflow"), ("dag_id", "d")}

    def bucket(le: str) -> float:
        return samples[("airflow_dag_d_t_duration_bucket", frozenset({*labels, ("le", le)}))]

    assert bucket("1.0") == 2  # the zero bucket goes to the first le
    assert bucket("5.0") == 4  # (1,2] and (2,4]
    assert bucket("10.0") == 5  # (4,8]
    assert bucket("1000.0") == 5  # (512,1024] is not ≤ 1000: conservative
    assert bucket("2500.0") == 8
    assert bucket("+Inf") == 8
    assert samples[("airflow_dag_d_t_duration_count", frozenset(labels))] == 8
    assert samples[("airflow_dag_d_t_duration_sum", frozenset(labels))] == 2410
    les = {dict(k[1])["le"] for k in samples if k[0].endswith("_bucket")}
    assert len(les) == len(DEFAULT_BUCKETS_MS) + 1


def test_exponential_negative_buckets_go_to_the_first_bucket() -> None:
    bridge = MetricsBridge()
    point = exp_point(scale=0, offset=0, counts=[], total=-3.0)
    point.negative.offset = 1
    point.negative.bucket_counts.extend([1])
    point.count = 1
    bridge.ingest(request(exp_metric("h", point)))
    assert value(bridge, "h_bucket", le="1.0") == 1


def test_explicit_histograms_keep_their_bounds_and_cumulative_ones_add_increases() -> None:
    bridge = MetricsBridge()
    for counts, start in (([1, 0, 0], 1), ([2, 1, 0], 1), ([0, 0, 4], 50)):
        bridge.ingest(request(hist_metric("h.seconds", [0.5, 2.0], counts, float(sum(counts)),
                                          temporality=CUMULATIVE, start=start)))
    assert value(bridge, "h_seconds_bucket", le="0.5") == 2
    assert value(bridge, "h_seconds_bucket", le="2.0") == 3
    assert value(bridge, "h_seconds_bucket", le="+Inf") == 7
    assert value(bridge, "h_seconds_count") == 7
    # a later point with other bounds is re-bucketed onto the first ones, conservatively
    bridge.ingest(request(hist_metric("h.seconds", [1.0], [5, 0], 1.0)))
    assert value(bridge, "h_seconds_bucket", le="0.5") == 2
    assert value(bridge, "h_seconds_bucket", le="2.0") == 8


def test_invalid_histograms_and_le_attributes() -> None:
    bridge = MetricsBridge()
    result = bridge.ingest(request(hist_metric("bad", [1.0, 2.0], [1, 1], 1.0),
                                   hist_metric("unsorted", [2.0, 1.0], [1, 1, 1], 1.0)))
    assert result.rejected == {"invalid_histogram": 2}
    bridge.ingest(request(hist_metric("ok", [1.0], [1, 0], 1.0, attrs={"le": "x"})))
    assert value(bridge, "ok_bucket", le="1.0", exported_le="x") == 1
    bridge.ingest(request(hist_metric("unbounded", [], [3], 1.0)))  # one +Inf bucket: the fixed bounds, all at +Inf
    assert value(bridge, "unbounded_bucket", le="3.6e+06") == 0
    assert value(bridge, "unbounded_bucket", le="+Inf") == value(bridge, "unbounded_count") == 3


def test_forgotten_streams_keep_their_contribution() -> None:
    now = [0.0]
    bridge = MetricsBridge(stream_ttl_s=100, clock=lambda: now[0])
    bridge.ingest(request(sum_metric("c", number(5), temporality=CUMULATIVE)))
    assert bridge.stream_count() == 1
    now[0] = 500.0
    bridge.ingest(request(sum_metric("c", number(2, start=7), temporality=CUMULATIVE)))
    assert bridge.stream_count() == 1  # the first stream was forgotten, the new one is tracked
    assert value(bridge, "c_total") == 7


def test_decode_errors_are_typed() -> None:
    with pytest.raises(OtlpDecodeError, match="ExportMetricsServiceRequest"):
        decode_request(b"\xff\xff\xff\xff not protobuf")
    body = request(sum_metric("c", number(1))).SerializeToString()
    bridge = MetricsBridge()
    assert bridge.ingest_bytes(body).accepted == 1


def test_bridge_rejects_unsorted_buckets() -> None:
    with pytest.raises(ValueError, match="increasing"):
        MetricsBridge(buckets=(5, 1))


# --- the alert inbox --------------------------------------------------------------------------------------------

WEBHOOK: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}:{alertname="DriftDetected"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "crispflow-inbox",
    "groupLabels": {"alertname": "DriftDetected"},
    "commonLabels": {"alertname": "DriftDetected", "severity": "warning"},
    "commonAnnotations": {"summary": "drift on loan_default"},
    "externalURL": "http://127.0.0.1:9093",
    "alerts": [{
        "status": "firing",
        "labels": {"alertname": "DriftDetected", "severity": "warning"},
        "annotations": {"summary": "drift on loan_default"},
        "startsAt": "2025-01-01T00:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": "0123456789abcdef",
    }],
}


def _mutated(path: str, new: Any) -> dict[str, Any]:
    payload = copy.deepcopy(WEBHOOK)
    *parents, last = path.split(".")
    target: Any = payload
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if new is KeyError:
        del target[last]
    else:
        target[last] = new
    return payload


@pytest.mark.parametrize(("path", "new", "field", "rule"), [
    ("version", "3", "version", "version"),
    ("version", KeyError, "version", "version"),
    ("status", "pending", "status", "enum"),
    ("receiver", "", "receiver", "non_empty"),
    ("receiver", 7, "receiver", "type"),
    ("groupKey", None, "groupKey", "type"),
    ("commonLabels", ["x"], "commonLabels", "type"),
    ("groupLabels.alertname", 1, "groupLabels.alertname", "type"),
    ("truncatedAlerts", -1, "truncatedAlerts", "range"),
    ("truncatedAlerts", True, "truncatedAlerts", "type"),
    ("alerts", [], "alerts", "non_empty"),
    ("alerts", {}, "alerts", "type"),
    ("alerts.0.status", "unknown", "alerts[0].status", "enum"),
    ("alerts.0.labels", KeyError, "alerts[0].labels", "type"),
    ("alerts.0.labels.severity", 3, "alerts[0].labels.severity", "type"),
    ("alerts.0.startsAt", 0, "alerts[0].startsAt", "type"),
    ("alerts.0.fingerprint", 12, "alerts[0].fingerprint", "type"),
])
def test_webhook_validation_names_the_field_and_rule(path: str, new: Any, field: str, rule: str) -> None:
    with pytest.raises(AlertPayloadError) as raised:
        parse_webhook(json.dumps(_mutated(path, new)).encode())
    assert (raised.value.field, raised.value.rule) == (field, rule)
    assert repr(field) in str(raised.value) and f"[rule: {rule}]" in str(raised.value)


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_webhook_bodies_that_are_not_objects(body: bytes) -> None:
    with pytest.raises(AlertPayloadError) as raised:
        parse_webhook(body)
    assert raised.value.field in ("body", "payload")


def test_inbox_round_trip(tmp_path) -> None:
    inbox = AlertInbox(tmp_path / "state" / "alerts.jsonl")
    assert inbox.read() == []
    at = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    resolved = _mutated("status", "resolved")
    inbox.record(WEBHOOK, received_at=at)
    inbox.record(resolved)
    entries = inbox.read()
    assert [e["payload"] for e in entries] == [WEBHOOK, resolved]
    assert entries[0]["received_at"] == "2025-03-01T12:00:00+00:00"
    assert datetime.fromisoformat(entries[1]["received_at"]).tzinfo is not None
    assert [e["payload"]["status"] for e in inbox.read(limit=1)] == ["resolved"]
    assert inbox.read(limit=0) == []
    assert len(inbox.read(limit=10)) == 2
    assert stat.S_IMODE(inbox.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(inbox.path.parent.stat().st_mode) == 0o700
    assert len(inbox.path.read_text().splitlines()) == 2


def test_inbox_refuses_invalid_payloads_without_writing(tmp_path) -> None:
    inbox = AlertInbox(tmp_path / "alerts.jsonl")
    with pytest.raises(AlertPayloadError):
        inbox.record({"version": "4"})
    assert not inbox.path.exists()


def test_inbox_skips_a_torn_last_line_but_not_a_corrupt_one(tmp_path) -> None:
    inbox = AlertInbox(tmp_path / "alerts.jsonl")
    inbox.record(WEBHOOK)
    with inbox.path.open("a") as f:
        f.write('{"received_at": "2025-')
    assert len(inbox.read()) == 1
    inbox.path.write_text("not json\n" + inbox.path.read_text())
    with pytest.raises(AlertInboxError, match="line 1"):
        inbox.read()
