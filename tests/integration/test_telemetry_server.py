"""The telemetry server as a real process (`python -m crispflow.monitoring.telemetry_server`) on a free loopback
port: OTLP pushed by the real OpenTelemetry SDK and by Airflow's own OTel logger (in subprocesses, configured by
the OTEL_* environment variables as the stack does), scraped by the real Prometheus 2.42, fed by the real
Alertmanager 0.25; bearer auth, /health, the body limits and encodings, the alert inbox round trip."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from support.servers import stop_process, wait_for_port
from support.stack import clean_env, free_ports, wait_for

pytestmark = pytest.mark.slow

MODULE = "crispflow.monitoring.telemetry_server"


@dataclass
class Telemetry:
    url: str
    port: int
    token: str
    inbox: Path
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        resp = requests.get(f"{self.url}/metrics", headers=self.auth, timeout=30)
        resp.raise_for_status()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(resp.text) for s in family.samples}

    def sample(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))


def _start(tmp: Path, token: str, port: int) -> subprocess.Popen[bytes]:
    log = (tmp / "telemetry.log").open("wb")
    env = clean_env() | {"CRISPFLOW_TELEMETRY_TOKEN": token}
    return subprocess.Popen([sys.executable, "-m", MODULE, "--host", "127.0.0.1", "--port", str(port),
                             "--inbox", str(tmp / "inbox" / "alerts.jsonl")], env=env, stdout=log, stderr=log)


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Telemetry]:
    tmp = tmp_path_factory.mktemp("telemetry")
    token = f"tel-{uuid.uuid4().hex}"
    (port,) = free_ports(1)
    proc = _start(tmp, token, port)
    try:
        wait_for_port(port, 60, proc)
        yield Telemetry(f"http://127.0.0.1:{port}", port, token, tmp / "inbox" / "alerts.jsonl", tmp / "telemetry.log")
    finally:
        stop_process(proc)


def _otlp(body: bytes, token: str | None, port: int, **headers: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    all_headers = {"Content-Type": "application/x-protobuf", **headers}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/v1/metrics", body=body, headers=all_headers)
    return conn.getresponse()


def _counter_request(name: str, value: int) -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

    point = pb.NumberDataPoint(as_int=value)
    metric = pb.Metric(name=name, sum=pb.Sum(data_points=[point], is_monotonic=True,
                                             aggregation_temporality=pb.AGGREGATION_TEMPORALITY_DELTA))
    summary = pb.Metric(name=f"{name}.summary", summary=pb.Summary(data_points=[pb.SummaryDataPoint(count=1)]))
    return ExportMetricsServiceRequest(resource_metrics=[pb.ResourceMetrics(
        scope_metrics=[pb.ScopeMetrics(metrics=[metric, summary])])]).SerializeToString()


# --- process, auth ----------------------------------------------------------------------------------------------


def test_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    env = clean_env() | {"CRISPFLOW_TELEMETRY_TOKEN": ""}
    done = subprocess.run([sys.executable, "-m", MODULE, "--port", str(port), "--inbox", str(tmp_path / "a.jsonl")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "CRISPFLOW_TELEMETRY_TOKEN" in done.stderr


def test_health_is_open_and_everything_else_needs_the_token(telemetry: Telemetry) -> None:
    health = requests.get(f"{telemetry.url}/health", timeout=30)
    assert (health.status_code, health.text) == (200, "ok\n")
    for method, path in (("GET", "/metrics"), ("GET", "/v1/alerts"), ("POST", "/v1/alerts"), ("POST", "/v1/metrics"),
                         ("GET", "/nowhere")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {telemetry.token}"}):
            resp = requests.request(method, f"{telemetry.url}{path}", headers=headers, data=b"{}", timeout=30)
            assert resp.status_code == 401, (method, path, headers)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert telemetry.token not in resp.text
    assert requests.get(f"{telemetry.url}/nowhere", headers=telemetry.auth, timeout=30).status_code == 404
    assert requests.delete(f"{telemetry.url}/metrics", headers=telemetry.auth, timeout=30).status_code == 405
    metrics = requests.get(f"{telemetry.url}/metrics", headers=telemetry.auth, timeout=30)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")


def test_logs_its_address_once_and_never_the_token(telemetry: Telemetry) -> None:
    requests.get(f"{telemetry.url}/metrics", headers=telemetry.auth, timeout=30)
    text = wait_for("the start line", lambda: "listening on" in telemetry.log.read_text() and telemetry.log.read_text(),
                    30)
    assert text.count(f"listening on http://127.0.0.1:{telemetry.port}") == 1
    assert telemetry.token not in text


# --- OTLP -------------------------------------------------------------------------------------------------------


def test_two_sdk_processes_push_a_counter_a_histogram_and_a_gauge(telemetry: Telemetry) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    def provider(compression: Compression) -> MeterProvider:
        exporter = OTLPMetricExporter(
            endpoint=f"{telemetry.url}/v1/metrics", headers={"authorization": f"Bearer {telemetry.token}"},
            compression=compression,
            preferred_temporality={Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA})
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        exponential = View(instrument_type=Histogram, aggregation=ExponentialBucketHistogramAggregation())
        return MeterProvider(resource=Resource.create({"service.name": "airflow"}), metric_readers=[reader],
                             views=[exponential])

    run = uuid.uuid4().hex[:8]
    scheduler, task = provider(Compression.NoCompression), provider(Compression.Gzip)
    try:
        for process, successes, durations, running in ((scheduler, 3, (2.0, 40.0), 1), (task, 4, (700.0,), 5)):
            meter = process.get_meter("crispflow.tests")
            meter.create_counter(f"test_{run}.ti_successes").add(successes, {"dag_id": "loans"})
            histogram = meter.create_histogram(f"test_{run}.task.duration", unit="ms")
            for duration in durations:
                histogram.record(duration, {"dag_id": "loans"})
            meter.create_gauge(f"test_{run}.executor.running_tasks").set(running, {"status": "running"})
            assert process.force_flush(30_000)
        task.get_meter("crispflow.tests").create_counter(f"test_{run}.ti_successes").add(2, {"dag_id": "loans"})
        assert task.force_flush(30_000)
    finally:
        scheduler.shutdown()
        task.shutdown()

    samples = telemetry.samples()
    loans = {("service", "airflow"), ("dag_id", "loans")}

    def at(name: str, labels: set[tuple[str, str]] = loans, **extra: str) -> float:
        return samples[(f"test_{run}_{name}", frozenset(labels | set(extra.items())))]

    assert at("ti_successes_total") == 9  # 3 + 4 + 2: delta from two processes, accumulated
    assert at("task_duration_count") == 3
    assert at("task_duration_sum") == 742
    assert at("task_duration_bucket", le="5.0") == 1
    assert at("task_duration_bucket", le="50.0") == 2
    assert at("task_duration_bucket", le="500.0") == 2
    assert at("task_duration_bucket", le="1000.0") == 3
    assert at("task_duration_bucket", le="+Inf") == 3
    assert at("executor_running_tasks", {("service", "airflow"), ("status", "running")}) in (1, 5)


def test_airflow_otel_logger_in_two_processes(telemetry: Telemetry) -> None:
    dag = f"telemetry_{uuid.uuid4().hex[:8]}"
    script = (
        "import os\n"
        "from airflow._shared.observability.metrics.otel_logger import flush_otel_metrics, get_otel_logger\n"
        "stats = get_otel_logger()\n"
        "tags = {'dag_id': os.environ['TEST_DAG_ID']}\n"
        "stats.incr('ti_successes', tags=tags)\n"
        "stats.incr('ti_successes', tags=tags)\n"
        "stats.incr('ti_failures', tags=tags)\n"
        "stats.timing('dag_processing.last_duration', 1234.5, tags=tags)\n"
        "stats.gauge('executor.open_slots', 31, tags={'status': 'open', **tags})\n"
        "flush_otel_metrics()\n"
    )
    env = os.environ | {
        "TEST_DAG_ID": dag,
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{telemetry.url}/v1/metrics",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": f"Authorization=Bearer%20{telemetry.token}",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        "OTEL_SERVICE_NAME": "airflow",
    }
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=180)[0].decode(errors="replace") for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    labels = {"service": "airflow", "dag_id": dag}
    total = wait_for("airflow_ti_successes_total from two processes",
                     lambda: telemetry.sample("airflow_ti_successes_total", **labels) == 4, 60)
    assert total
    assert telemetry.sample("airflow_ti_failures_total", **labels) == 2
    assert telemetry.sample("airflow_dag_processing_last_duration_count", **labels) == 2
    assert telemetry.sample("airflow_dag_processing_last_duration_bucket", le="1000.0", **labels) == 0
    assert telemetry.sample("airflow_dag_processing_last_duration_bucket", le="2500.0", **labels) == 2
    assert telemetry.sample("airflow_executor_open_slots", status="open", **labels) == 31


def test_body_limits_encodings_and_errors(telemetry: Telemetry) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

    name = f"test_{uuid.uuid4().hex[:8]}.pushed"
    body = _counter_request(name, 5)
    for encoded, encoding in ((body, None), (gzip.compress(body), "gzip"), (zlib.compress(body), "deflate")):
        resp = _otlp(encoded, telemetry.token, telemetry.port, **({"Content-Encoding": encoding} if encoding else {}))
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/x-protobuf"
        answer = ExportMetricsServiceResponse.FromString(resp.read())
        assert answer.partial_success.rejected_data_points == 1  # the summary
        assert "unsupported_summary=1" in answer.partial_success.error_message
    assert telemetry.sample(f"{name.replace('.', '_')}_total") == 15

    before = telemetry.sample("crispflow_telemetry_otlp_decode_errors_total") or 0
    bad = _otlp(b"\xff\xff\xff\xff garbage", telemetry.token, telemetry.port)
    assert (bad.status, bad.read()) == (400, b"the body is not an OTLP ExportMetricsServiceRequest\n")
    assert _otlp(b"\x1f\x8b not gzip", telemetry.token, telemetry.port, **{"Content-Encoding": "gzip"}).status == 400
    assert _otlp(body, telemetry.token, telemetry.port, **{"Content-Encoding": "br"}).status == 400
    assert telemetry.sample("crispflow_telemetry_otlp_decode_errors_total") == before + 3
    assert _otlp(b"{}", telemetry.token, telemetry.port, **{"Content-Type": "application/json"}).status == 415

    bomb = gzip.compress(b"\0" * (9 * 1024 * 1024))  # a few KiB that inflate past the 8 MiB cap
    assert _otlp(bomb, telemetry.token, telemetry.port, **{"Content-Encoding": "gzip"}).status == 413

    conn = http.client.HTTPConnection("127.0.0.1", telemetry.port, timeout=30)
    conn.putrequest("POST", "/v1/metrics")
    conn.putheader("Authorization", f"Bearer {telemetry.token}")
    conn.putheader("Content-Type", "application/x-protobuf")
    conn.putheader("Content-Length", str(9 * 1024 * 1024))  # announced, never sent: refused before reading
    conn.endheaders()
    too_large = conn.getresponse()
    assert too_large.status == 413 and too_large.getheader("Connection") == "close"

    conn = http.client.HTTPConnection("127.0.0.1", telemetry.port, timeout=30)
    conn.putrequest("POST", "/v1/metrics")
    conn.putheader("Authorization", f"Bearer {telemetry.token}")
    conn.endheaders()
    assert conn.getresponse().status == 411


# --- alerts -----------------------------------------------------------------------------------------------------


def _webhook(alertname: str) -> dict[str, Any]:
    labels = {"alertname": alertname, "severity": "warning"}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}"}}', "truncatedAlerts": 0, "status": "firing",
        "receiver": "inbox", "groupLabels": {"alertname": alertname}, "commonLabels": labels,
        "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2025-01-01T00:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "abc"}],
    }


def test_alert_inbox_round_trip(telemetry: Telemetry) -> None:
    alertname = f"Probe{uuid.uuid4().hex[:8]}"
    url = f"{telemetry.url}/v1/alerts"
    resp = requests.post(url, json=_webhook(alertname), headers=telemetry.auth, timeout=30)
    assert resp.status_code == 200 and resp.json()["recorded"] is True
    mine = [e for e in requests.get(url, headers=telemetry.auth, timeout=30).json()
            if e["payload"]["commonLabels"].get("alertname") == alertname]
    assert [e["payload"] for e in mine] == [_webhook(alertname)]
    assert datetime.fromisoformat(mine[0]["received_at"]) <= datetime.now(UTC)
    assert len(requests.get(url, params={"limit": 1}, headers=telemetry.auth, timeout=30).json()) == 1
    assert requests.get(url, params={"limit": "x"}, headers=telemetry.auth, timeout=30).status_code == 400
    assert stat.S_IMODE(telemetry.inbox.stat().st_mode) == 0o600
    assert stat.S_IMODE(telemetry.inbox.parent.stat().st_mode) == 0o700

    wrong = _webhook(alertname) | {"version": "3"}
    refused = requests.post(url, json=wrong, headers=telemetry.auth, timeout=30)
    assert refused.status_code == 400 and "'version'" in refused.text
    assert requests.post(url, data=b"{", headers=telemetry.auth, timeout=30).status_code == 400
    big = requests.post(url, data=b" " * (1024 * 1024 + 1), headers=telemetry.auth, timeout=30)
    assert big.status_code == 413
    assert telemetry.sample("crispflow_telemetry_alerts_received_total", status="firing") >= 1


# --- the real Prometheus and Alertmanager -----------------------------------------------------------------------


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make install-monitoring)")
    return path


def test_prometheus_scrapes_it_with_the_token(telemetry: Telemetry, tmp_path: Path) -> None:
    prometheus = _binary("prometheus")
    name = f"test_{uuid.uuid4().hex[:8]}.scraped"
    assert _otlp(_counter_request(name, 7), telemetry.token, telemetry.port).status == 200
    secret = tmp_path / "token"
    secret.write_text(telemetry.token)
    secret.chmod(0o600)
    (config := tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "telemetry", "authorization": {"credentials_file": str(secret)},
                            "static_configs": [{"targets": [f"127.0.0.1:{telemetry.port}"]}]}],
    }))
    (port,) = free_ports(1)
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        wait_for_port(port, 60, proc)

        def query() -> list[dict[str, Any]]:
            resp = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": f"{name.replace('.', '_')}"
                                "_total"}, timeout=30)
            return resp.json()["data"]["result"] if resp.ok else []

        result = wait_for("the pushed counter in Prometheus", query, 60)
        assert float(result[0]["value"][1]) == 7
        assert result[0]["metric"]["job"] == "telemetry"
        targets = requests.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets
    finally:
        stop_process(proc)


def test_alertmanager_delivers_to_the_inbox(telemetry: Telemetry, tmp_path: Path) -> None:
    alertmanager = _binary("prometheus-alertmanager")
    alertname = f"Delivered{uuid.uuid4().hex[:8]}"
    secret = tmp_path / "token"
    secret.write_text(telemetry.token)
    secret.chmod(0o600)
    (config := tmp_path / "alertmanager.yml").write_text(json.dumps({
        "route": {"receiver": "inbox", "group_by": ["alertname"], "group_wait": "0s", "group_interval": "1s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "inbox", "webhook_configs": [{
            "url": f"{telemetry.url}/v1/alerts", "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": str(secret)}}}]}],
    }))
    (port,) = free_ports(1)
    with (tmp_path / "alertmanager.log").open("wb") as log:
        proc = subprocess.Popen([alertmanager, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=log, stderr=log)
    try:
        wait_for_port(port, 60, proc)
        alert = [{"labels": {"alertname": alertname, "severity": "warning"},
                  "annotations": {"summary": "a probe"}, "startsAt": datetime.now(UTC).isoformat()}]

        def posted() -> bool:
            resp = requests.post(f"http://127.0.0.1:{port}/api/v2/alerts", json=alert, timeout=30)
            return resp.status_code == 200

        wait_for("Alertmanager accepting alerts", posted, 60)

        def delivered() -> list[dict[str, Any]]:
            entries = requests.get(f"{telemetry.url}/v1/alerts", headers=telemetry.auth, timeout=30).json()
            return [e for e in entries if e["payload"]["groupLabels"].get("alertname") == alertname]

        entry = wait_for("the notification in the inbox", delivered, 90)[0]
        payload = entry["payload"]
        assert (payload["version"], payload["status"], payload["receiver"]) == ("4", "firing", "inbox")
        assert payload["alerts"][0]["labels"] == {"alertname": alertname, "severity": "warning"}
        assert payload["alerts"][0]["annotations"] == {"summary": "a probe"}
    finally:
        stop_process(proc)


def test_a_corrupt_inbox_answers_500_and_the_server_keeps_serving(tmp_path: Path) -> None:
    import threading

    from crispflow.monitoring.telemetry_server import TelemetryConfigError, make_server

    with pytest.raises(TelemetryConfigError, match="CRISPFLOW_TELEMETRY_TOKEN"):
        make_server("127.0.0.1", 0, token="", inbox=tmp_path / "alerts.jsonl")
    inbox = tmp_path / "alerts.jsonl"
    inbox.write_text("not json\n")
    server = make_server("127.0.0.1", 0, token="in-process", inbox=inbox)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    auth = {"Authorization": "Bearer in-process"}
    try:
        broken = requests.get(f"{url}/v1/alerts", headers=auth, timeout=30)
        assert broken.status_code == 500 and "not json" not in broken.text
        assert requests.get(f"{url}/health", timeout=30).status_code == 200
        scraped = requests.get(f"{url}/metrics", headers=auth, timeout=30).text
        assert 'crispflow_telemetry_requests_total{code="500",endpoint="alerts_get"} 1.0' in scraped
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)
