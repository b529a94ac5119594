"""AlertmanagerHook and AcknowledgeAlertOperator's silence: the connection `crispflow_alertmanager` gives the base
URL and basic auth; acknowledging an alert silences its dedup key in a real Alertmanager (created by the person,
the note as comment), a retry of the task finds the same silence, an unreachable Alertmanager fails the task
retryably with the acknowledgement kept, and without the connection nothing is silenced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crispflow.monitoring.alerts import claim, digest, read_alert

PIPELINE = "t_silence"
MODEL = f"crispflow-{PIPELINE}"
EPISODE = "champion-20260301T020000Z"
KEY = f"{MODEL}.{EPISODE}"
RECORD = {"model": MODEL, "pipeline": PIPELINE, "alias": "champion", "episode_id": EPISODE, "features": ["a"],
          "statistics": {"a": {"psi": 0.3}}, "max_drift_share": 0.3, "prediction_drift": False,
          "windows": [{"drifted_features": ["a"]}]}
PARAMS = {"pipeline": PIPELINE, "key": KEY, "note": ""}
CONN = "AIRFLOW_CONN_CRISPFLOW_ALERTMANAGER"


def test_the_connection_gives_the_url_and_the_credentials(monkeypatch) -> None:
    from crispflow_airflow.hooks.alertmanager import AlertmanagerHook

    monkeypatch.delenv(CONN, raising=False)
    assert AlertmanagerHook.is_configured() is False
    monkeypatch.setenv(CONN, json.dumps({"conn_type": "http", "host": "am.example.org", "port": 9443,
                                         "schema": "https", "login": "crispflow", "password": "s3cret"}))
    monkeypatch.setenv("AIRFLOW_CONN_T_AM", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9093/"}))
    assert AlertmanagerHook.is_configured() is True
    assert AlertmanagerHook().endpoint() == ("https://am.example.org:9443", ("crispflow", "s3cret"))
    assert AlertmanagerHook("t_am").endpoint() == ("http://127.0.0.1:9093", None)


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    """A prediction store holding one raised, unacknowledged alert."""
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", str(tmp_path / "predictions"))
    claim(tmp_path / "predictions", MODEL, digest(RECORD), {"run_id": "watch"})
    return tmp_path / "predictions"


def operator():
    from crispflow_airflow.operators.alerts import AcknowledgeAlertOperator

    return AcknowledgeAlertOperator(task_id="acknowledge", pipeline="{{ params.pipeline }}", key="{{ params.key }}",
                                    note="{{ params.note }}")


def test_acknowledging_silences_the_alert_and_a_retry_finds_the_same_silence(run_alone, root, alertmanager,
                                                                             monkeypatch) -> None:
    from support.servers import free_port

    from crispflow_airflow.operators.alerts import SilenceNotCreated

    monkeypatch.setenv(CONN, alertmanager.http_conn())
    dr, ti = run_alone(operator, PARAMS, {"note": "looking at the income feed"})
    assert dr.state == "success"
    silence = ti.xcom_pull(task_ids="acknowledge")["silence"]
    assert silence["created"] is True
    stored = alertmanager.api("GET", f"silence/{silence['id']}")
    assert stored["matchers"] == [{"name": "dedup_key", "value": KEY, "isRegex": False, "isEqual": True}]
    assert (stored["createdBy"], stored["comment"], stored["endsAt"]) == (
        "dag_test", "looking at the income feed", silence["ends_at"])

    op = operator()  # a retry of the same task: the acknowledgement passes, the silence is found again
    op.render_template_fields({"params": PARAMS})
    assert op.execute({"ti": ti, "dag_run": dr})["silence"] == {**silence, "created": False}

    monkeypatch.setenv(CONN, json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": free_port(),
                                         "login": alertmanager.user, "password": alertmanager.password}))
    with pytest.raises(SilenceNotCreated, match=f"alert {KEY} is acknowledged, but not silenced: .*no answer") as c:
        op.execute({"ti": ti, "dag_run": dr})
    assert alertmanager.password not in str(c.value)
    assert read_alert(root, MODEL, KEY)["acknowledged_by"] == "dag_test"

    monkeypatch.delenv(CONN)
    assert op.execute({"ti": ti, "dag_run": dr})["silence"] is None
    assert [s["id"] for s in alertmanager.api("GET", "silences")] == [silence["id"]]
