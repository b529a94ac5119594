"""DriftAlertNotifier: templated fields render; from a task it delivers one digest per incident through Airflow's
HttpNotifier to a real loopback receiver (webhook and Slack shapes, Idempotency-Key), skips an optional channel
without a connection, suppresses a second run's alert, sends nothing without an episode, and a bad channel config
fails as InvalidRequest."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

MODEL = "crispflow-demo"
RECORD = {"model": MODEL, "pipeline": "demo", "alias": "champion", "episode_id": "champion-20260301T020000Z",
          "fired_at": "2026-03-01T02:05:00+00:00", "features": ["int_rate"],
          "statistics": {"int_rate": {"test": "ks", "psi": 0.4}}, "max_drift_share": 0.3, "prediction_drift": False,
          "windows": [{"drifted_features": ["int_rate"]}]}
KEY = f"{MODEL}.champion-20260301T020000Z"


@pytest.fixture
def receiver(monkeypatch) -> Iterator[list]:
    """A loopback HTTP server recording every POST (path, headers, JSON body), as connection `alerts_http`."""
    posts: list[tuple[str, dict, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append((self.path, dict(self.headers), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_HTTP", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": httpd.server_address[1], "schema": "http"}))
    yield posts
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", (tmp_path / "predictions").as_uri())
    monkeypatch.delenv("CRISPFLOW_LAKE_CONN_ID", raising=False)
    return tmp_path / "predictions"


def alert_task(run_alone, **kwargs):
    """DriftAlertNotifier called from a task (as watch_drift does), run alone by dag.test()."""
    from airflow.sdk import task

    @task(task_id="alert")
    def alert(**context) -> dict:
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.notifiers.alerts import DriftAlertNotifier

        with as_airflow_errors():
            return DriftAlertNotifier(**kwargs).send(context)

    return run_alone(lambda: alert(), {})


CHANNELS = [{"kind": "webhook", "conn_id": "alerts_http", "endpoint": "/hooks/drift"},
            {"kind": "slack", "conn_id": "alerts_http", "endpoint": "/slack", "name": "slack"},
            {"kind": "email", "conn_id": "no_such_smtp", "to": ["ops@example.org"], "optional": True}]


def test_templated_fields_render() -> None:
    from crispflow_airflow.notifiers.alerts import DriftAlertNotifier

    n = DriftAlertNotifier(channels="{{ params.channels }}", record="{{ params.record }}")
    assert tuple(n.template_fields) == ("channels", "record")
    n.render_template_fields({"params": {"channels": "[]", "record": "r"}})
    assert (n.channels, n.record) == ("[]", "r")


def test_one_digest_per_incident_through_http(run_alone, receiver, root: Path) -> None:
    dr, ti = alert_task(run_alone, channels=CHANNELS, record=RECORD)
    assert dr.state == "success"
    assert ti.xcom_pull(task_ids="alert") == {"sent": ["webhook:alerts_http", "slack"],
                                              "skipped": ["email:no_such_smtp"], "suppressed": False,
                                              "dedup_key": KEY, "severity": "high"}
    (hook_path, hook_headers, digest), (slack_path, _, slack) = receiver
    assert hook_path == "/hooks/drift" and hook_headers["Idempotency-Key"] == KEY and digest["dedup_key"] == KEY
    assert slack_path == "/slack" and slack["text"] == digest["title"] and slack["blocks"]
    state = json.loads((root / MODEL / "drift" / "alerts" / f"{KEY}.json").read_text())
    assert state["sent"] == ["webhook:alerts_http", "slack"] and state["raised_by"]["run_id"] == dr.run_id

    _, ti2 = alert_task(run_alone, channels=CHANNELS, record=RECORD)  # another run: suppressed
    assert ti2.xcom_pull(task_ids="alert") == {"sent": [], "suppressed": True, "dedup_key": KEY}
    assert len(receiver) == 2


def test_no_episode_sends_nothing_and_a_bad_channel_is_an_invalid_request(run_alone, receiver, root, capfd) -> None:
    dr, ti = alert_task(run_alone, channels=CHANNELS, source_task_id="no_such_task")
    assert dr.state == "success" and ti.xcom_pull(task_ids="alert")["sent"] == [] and not receiver

    dr, ti = alert_task(run_alone, channels=[{"kind": "pager"}], record=RECORD)
    assert dr.state == "failed" and ti.try_number == 1  # InvalidRequest: not retried
    out = capfd.readouterr()
    assert "InvalidRequest: invalid request: alert_channels[0]: kind must be one of" in out.out + out.err
    assert not receiver and not (root / MODEL).exists()
