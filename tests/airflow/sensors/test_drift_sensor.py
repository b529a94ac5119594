"""DriftSensor: templated fields render, malformed requests fail as InvalidRequest, the policy is the spec's
`drift_watch:` tightened by the run (a loosening fails as InvalidRequest), one episode fires one asset event
(a second run, or a second sensor, emits nothing; a retry of the recording run emits its own record), no episode
before the deadline skips the task (deferred to the trigger in between). Real store folder and pipeline specs, real
dag.test() (`run_alone` in tests/airflow/conftest.py)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from crispflow.monitoring import store
from crispflow.settings import project_root

T0 = datetime(2026, 3, 1, tzinfo=UTC)
EPISODE = "champion-20260301T010000Z"


def window(model: str, i: int, share: float) -> dict:
    status = "drift" if share >= 0.1 else "no_drift"
    drifted = ["int_rate"] if status == "drift" else []
    return {"model": model, "alias": "champion", "version": "1", "window_start": (T0 + timedelta(hours=i)).isoformat(),
            "window_end": (T0 + timedelta(hours=i + 1)).isoformat(), "rows": 400, "labelled_rows": 0,
            "status": status, "drift": status == "drift", "drift_share": share, "drifted_features": drifted,
            "statistics": {}, "prediction_drift": False, "report": f"w{i}"}


def sensor(**kwargs):
    from crispflow_airflow.sensors.drift import DriftSensor

    return DriftSensor(task_id="watch", **{"pipeline": "{{ params.pipeline }}", "policy": "{{ params.policy }}",
                                           **kwargs})


def write_spec(folder: Path, name: str, **sections: dict) -> None:
    """A pipeline spec `name` (the demo's lending_club spec under another name) with extra sections."""
    data = yaml.safe_load((project_root() / "include" / "pipelines" / "lending_club.yaml").read_text())
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({**data, "name": name, **sections}))


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", tmp_path.as_uri())
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(tmp_path / "pipelines"))
    monkeypatch.delenv("CRISPFLOW_LAKE_CONN_ID", raising=False)
    name = f"t_sensor_{uuid.uuid4().hex[:6]}"
    write_spec(tmp_path / "pipelines", name)
    write_spec(tmp_path / "pipelines", "demo", drift_watch={"k": 3, "n": 4, "cooldown_hours": 12})
    return name


def watch(run_alone, pipeline: str, **kwargs):
    """The sensor alone in a fresh DAG, run by dag.test() (a deferral runs its trigger inline)."""
    return run_alone(lambda: sensor(poke_interval=0.1, **kwargs), {"pipeline": pipeline, "policy": {}})


def drift_events(dag_id: str) -> list:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(select(AssetEvent).where(AssetEvent.source_dag_id == dag_id)).all()
        s.expunge_all()
        return rows


def test_templated_fields_render() -> None:
    op = sensor(root_url="{{ params.root }}")
    assert tuple(op.template_fields) == ("pipeline", "policy", "root_url")
    op.render_template_fields({"params": {"pipeline": "demo", "policy": '{"k": 3}', "root": "s3://b/p"}})
    assert (op.pipeline, op.policy, op.root_url) == ("demo", '{"k": 3}', "s3://b/p")
    assert op.deferrable and op.timeout == timedelta(minutes=55).total_seconds()


@pytest.mark.parametrize(("name", "policy", "message"), [
    ("../x", None, "invalid request: pipeline: '../x' is not a valid pipeline name"),
    ("demo", "{k", "invalid request: policy: '{k' is not a JSON object"),
    ("demo", {"k": 4}, "invalid request: policy.k: 4 would loosen the spec's 3; a run may only lower it"),
    ("demo", {"cooldown_hours": 1}, "policy.cooldown_hours: 1 would loosen the spec's 12.0; a run may only raise it"),
    ("demo", {"budget": 50}, "invalid request: policy.budget: 50 would loosen the spec's 3; a run may only lower it"),
    ("demo", {"lookback": 10}, "policy.lookback: 10 differs from the spec's 168; it is not overridable by a run"),
    ("demo", {"k": 1, "n": 3}, "policy.n: 3 would loosen the spec's 4; a run may only raise it"),
    ("demo", {"alert_channels": []}, "invalid request: policy: unknown field(s) ['alert_channels']"),
])
def test_malformed_or_loosening_requests_fail_as_invalid_request(pipeline, name, policy, message) -> None:
    import crispflow_airflow.exceptions as exceptions

    with pytest.raises(exceptions.InvalidRequest, match=re.escape(message)) as err:
        sensor(pipeline=name, policy=policy).execute({})
    assert isinstance(err.value, exceptions.AirflowFailException)  # never retried


def test_the_policy_is_the_specs_tightened_by_the_run(pipeline) -> None:
    from crispflow.monitoring.episodes import DriftPolicy

    assert sensor(pipeline="demo", policy=None)._request()[1] == DriftPolicy(k=3, n=4, cooldown_hours=12).to_dict()
    _, policy = sensor(pipeline="demo", policy='{"k": 2, "cooldown_hours": 24, "budget": 1}')._request()
    assert policy == DriftPolicy(k=2, n=4, cooldown_hours=24, budget=1).to_dict()


def test_a_pipeline_without_a_spec_is_a_configuration_error(pipeline) -> None:
    import crispflow_airflow.exceptions as exceptions

    with pytest.raises(exceptions.GateConfigurationError, match="no such pipeline spec"):
        sensor(pipeline="t_nospec", policy=None).execute({})


def test_one_episode_fires_one_event_and_an_idle_store_skips(run_alone, pipeline, tmp_path: Path) -> None:
    model = f"crispflow-{pipeline}"
    store.write_window(tmp_path, window(model, 0, 0.0), {}, "")
    dr, ti = watch(run_alone, pipeline, timeout=1.0)  # no episode: deferred, the trigger times out, the task skips
    assert dr.state == "success" and ti.state == "skipped" and not drift_events(dr.dag_id)

    for i in (1, 2):
        store.write_window(tmp_path, window(model, i, 0.3), {}, "")
    dr, ti = watch(run_alone, pipeline)
    assert ti.state == "success"
    (event,) = drift_events(dr.dag_id)
    recorded = store.read_episode(tmp_path, model, "champion-20260301T020000Z")  # windows 1 and 2 are hot
    assert event.extra == recorded == ti.xcom_pull(task_ids="watch")
    assert recorded["fired_by"] == {"dag_id": dr.dag_id, "run_id": dr.run_id, "task_id": "watch"}

    dr2, ti2 = watch(run_alone, pipeline, timeout=1.0)  # drift persists: the episode already fired, nothing is emitted
    assert ti2.state == "skipped" and not drift_events(dr2.dag_id)


def test_only_the_run_that_recorded_the_episode_emits_its_event(pipeline, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowSkipException
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from crispflow.monitoring.episodes import check
    from crispflow_airflow.assets import DRIFT_DETECTED

    model = f"crispflow-{pipeline}"
    for i in (0, 1):
        store.write_window(tmp_path, window(model, i, 0.3), {}, "")
    decision = check(tmp_path, model, {}, T0 + timedelta(hours=3)).to_dict()
    pushed: list[dict] = []

    def complete(run_id: str) -> tuple[dict | None, OutletEventAccessors]:
        events = OutletEventAccessors()
        ti = SimpleNamespace(dag_id="watch_drift", run_id=run_id, task_id="watch",
                             xcom_push=lambda **kw: pushed.append(kw))
        try:
            out = sensor(pipeline=pipeline, policy={}).execute_complete(
                {"ti": ti, "outlet_events": events}, {"status": "fire", "decision": decision})
        except AirflowSkipException:
            out = None
        return out, events

    first, events = complete("r1")
    assert first["episode_id"] == EPISODE and events[DRIFT_DETECTED].extra == first
    assert events[DRIFT_DETECTED].partition_keys == {f"{pipeline}/{EPISODE}"}  # one retrain run per episode
    again, events = complete("r1")  # a retry of the recording run (after a crash) emits the stored record
    assert again == first and events[DRIFT_DETECTED].extra == first
    other, events = complete("r2")  # another run: skipped, no event
    assert other is None and events[DRIFT_DETECTED].extra == {} and not events[DRIFT_DETECTED].partition_keys
    reason = f"episode {EPISODE} of {model} already fired (by watch_drift/r1): no second event"
    assert pushed == [{"key": "skip_reason", "value": reason}]  # for the run's note
