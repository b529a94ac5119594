"""AcknowledgeAlertOperator: the person who triggered the run is recorded with the note; acknowledgement is
exclusive (a second run fails without retry naming who acknowledged first, the first stays); a retry of the same
task passes; an unknown alert fails without retry. Real task runs (`dag.test`) on a local prediction store."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispflow.monitoring.alerts import claim, digest, read_alert

PIPELINE = "t_ack"
MODEL = f"crispflow-{PIPELINE}"
RECORD = {"model": MODEL, "pipeline": PIPELINE, "alias": "champion", "episode_id": "champion-20260301T020000Z",
          "features": ["a"], "statistics": {"a": {"psi": 0.3}}, "max_drift_share": 0.3, "prediction_drift": False,
          "windows": [{"drifted_features": ["a"]}]}
KEY = f"{MODEL}.champion-20260301T020000Z"
PARAMS = {"pipeline": PIPELINE, "key": KEY, "note": ""}


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    """A prediction store holding one raised, unacknowledged alert."""
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", str(tmp_path / "predictions"))
    claim(tmp_path / "predictions", MODEL, digest(RECORD), {"run_id": "watch"})
    return tmp_path / "predictions"


def operator(**kwargs):
    from crispflow_airflow.operators.alerts import AcknowledgeAlertOperator

    return AcknowledgeAlertOperator(task_id="acknowledge", pipeline="{{ params.pipeline }}", key="{{ params.key }}",
                                    note="{{ params.note }}", **kwargs)


def test_the_person_is_recorded_and_a_second_acknowledgement_is_refused(run_alone, root) -> None:
    from crispflow_airflow.operators.alerts import AlertNotAcknowledged

    dr, ti = run_alone(operator, PARAMS, {"note": "looking at the income feed"})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="acknowledge")
    assert out["acknowledged_by"] == "dag_test" == dr.triggering_user_name  # the person who triggered the run
    assert (out["model"], out["key"], out["note"]) == (MODEL, KEY, "looking at the income feed")
    state = read_alert(root, MODEL, KEY)
    assert state["acknowledged"] is True and state["acknowledged_by"] == "dag_test"
    assert state["acknowledged_note"] == "looking at the income feed"
    link = ti.xcom_pull(task_ids="acknowledge", key="_link_DriftAlertLink")
    assert link.endswith(f"/crispflow/drift/{MODEL}#alert-{KEY}")

    # a retry of the same task instance passes (same task, same person): nothing changes
    op = operator()
    op.render_template_fields({"params": PARAMS})
    assert op.execute({"ti": ti, "dag_run": dr})["acknowledged_at"] == out["acknowledged_at"]

    # another run: refused without retry, naming who acknowledged first; the first acknowledgement stays
    second, ti2 = run_alone(lambda: operator(retries=2), PARAMS, {"note": "me too"})
    assert second.state == "failed" and ti2.state == "failed" and ti2.try_number == 1
    op.render_template_fields({"params": PARAMS})
    with pytest.raises(AlertNotAcknowledged, match=f"alert {KEY} was already acknowledged by dag_test at "):
        op.execute({"ti": ti2, "dag_run": second})
    assert read_alert(root, MODEL, KEY) == state


def test_an_unknown_alert_fails_without_retry(run_alone, root) -> None:
    from crispflow_airflow.operators.alerts import AlertNotAcknowledged

    missing = {**PARAMS, "key": f"{MODEL}.champion-20990101T000000Z"}
    dr, ti = run_alone(lambda: operator(retries=2), PARAMS, {"key": missing["key"]})
    assert dr.state == "failed" and ti.try_number == 1
    op = operator()
    op.render_template_fields({"params": missing})
    with pytest.raises(AlertNotAcknowledged, match="no drift alert"):
        op.execute({"ti": ti, "dag_run": dr})
    assert read_alert(root, MODEL, KEY)["acknowledged"] is False
