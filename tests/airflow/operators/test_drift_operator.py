"""DriftMonitorOperator: templated fields render, the XCom is the small summary of each judged alias, bad requests
fail as InvalidRequest and a version without a reference profile as GateConfigurationError (after the champion's
window is stored). Against a real MLflow server and a real store folder."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest_plugins = ["support.mlflow_server"]

END = datetime(2026, 11, 20, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


def operator(**kwargs):
    from crispflow_airflow.operators.drift import DriftMonitorOperator

    return DriftMonitorOperator(task_id="compute_drift", **{"pipeline": "{{ params.pipeline }}",
                                                            "window_minutes": "{{ params.window_minutes }}",
                                                            "settings": "{{ params.settings }}", **kwargs})


def context(params: dict, *, interval: tuple[datetime, datetime] | None = (END - HOUR, END)) -> dict:
    from airflow.models.dagrun import DagRun

    dag_run = DagRun(dag_id="monitor_drift", run_id="r", conf=params)
    dag_run.run_after = END
    start, end = interval or (None, None)
    return {"dag_run": dag_run, "data_interval_start": start, "data_interval_end": end}


def test_templated_fields_render() -> None:
    op = operator()
    assert tuple(op.template_fields) == ("pipeline", "window_minutes", "settings")
    op.render_template_fields({"params": {"pipeline": "lending_club", "window_minutes": 30, "settings": {}}})
    assert (op.pipeline, op.window_minutes, op.settings) == ("lending_club", "30", "{}")
    assert op.aliases == ("champion", "canary")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"settings": ["alpha"]}, "invalid request: settings: must be an object, got list"),
        ({"settings": {"alpha": 5}}, "invalid request: drift settings: alpha"),
        ({"settings": {"bogus": 1}}, "invalid request: settings: unknown field(s) ['bogus']"),
        ({"settings": {"alpha": 0.001}}, "settings.alpha: 0.001 would loosen the spec's 0.01; a run may only raise it"),
        ({"settings": {"min_drift_share": 0.5}}, "settings.min_drift_share: 0.5 would loosen the spec's 0.1"),
        ({"settings": {"min_rows": 5}}, "settings.min_rows: 5 differs from the spec's 30; it is not overridable"),
        ({"settings": {"min_psi": "low"}}, "invalid request: settings.min_psi: 'low' must be a finite number"),
        ({"window_minutes": 0}, "invalid request: window_minutes: must be an integer in [1, 10080] or null, got 0"),
        ({"window_minutes": "soon"}, "window_minutes: must be an integer in [1, 10080] or null, got 'soon'"),
    ],
)
def test_bad_requests_fail_as_invalid_request_without_retry(params, message) -> None:
    import crispflow_airflow.exceptions as exceptions

    op = operator(pipeline="lending_club", window_minutes=params.get("window_minutes"),
                  settings=params.get("settings"))
    with pytest.raises(exceptions.InvalidRequest, match=re.escape(message)) as err:
        op.execute(context(params))
    assert isinstance(err.value, exceptions.AirflowFailException)


# --- against a real MLflow server ------------------------------------------------------------------------------------


@pytest.fixture
def world(mlflow_server, tmp_path: Path, monkeypatch):
    """A model `crispflow-<pipeline>`: v1 (champion) with a reference profile, v2 without one; an empty store."""
    import pandas as pd

    from crispflow.model.features import features
    from crispflow.model.registry import client
    from crispflow.monitoring import build_profile
    from crispflow.monitoring.windows import REFERENCE_TAG
    from crispflow.settings import project_root
    from crispflow.spec import load_spec

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", (tmp_path / "predictions").as_uri())
    monkeypatch.delenv("CRISPFLOW_LAKE_CONN_ID", raising=False)
    spec = load_spec("lending_club")
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet").head(1000)
    mlf = client(mlflow_server.url)
    pipeline = f"t_op_{uuid.uuid4().hex[:6]}"
    model = f"crispflow-{pipeline}"
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / f"{pipeline}.yaml").write_text(  # the demo spec under the test's name
        (project_root() / "include" / "pipelines" / "lending_club.yaml").read_text().replace(
            "name: lending_club\n", f"name: {pipeline}\n", 1))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(tmp_path / "pipelines"))
    mlf.create_registered_model(model)
    exp = mlf.create_experiment(f"exp-{model}")
    versions = []
    for with_profile in (True, False):
        run_id = mlf.create_run(exp).info.run_id
        mv = mlf.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)
        if with_profile:
            mlf.log_text(run_id, json.dumps(build_profile(spec, features(spec, loans))), "profile.json")
            mlf.set_model_version_tag(model, mv.version, REFERENCE_TAG, f"runs:/{run_id}/profile.json")
        versions.append(str(mv.version))
    mlf.set_registered_model_alias(model, "champion", versions[0])
    return {"mlf": mlf, "pipeline": pipeline, "model": model, "versions": versions,
            "root": tmp_path / "predictions"}


@pytest.mark.slow
def test_the_xcom_is_the_window_and_one_summary_per_judged_alias(world) -> None:
    out = operator(pipeline=world["pipeline"], window_minutes=None, settings={}).execute(context({}))
    assert set(out) == {"model", "window_start", "window_end", "summaries", "store"}
    assert (out["model"], out["window_start"], out["window_end"]) == (
        world["model"], (END - HOUR).isoformat(), END.isoformat())
    (summary,) = out["summaries"]
    assert summary["alias"] == "champion" and summary["version"] == world["versions"][0]
    assert summary["status"] == "insufficient_data" and summary["mlflow_artifact"].endswith(
        "/drift/20261120T100000Z-champion.json")
    assert Path(summary["report"].removeprefix("file://")).is_file()
    assert len(json.dumps(out)) < 10_000  # small: paths, not reports

    manual = operator(pipeline=world["pipeline"], window_minutes=30, settings=None).execute(
        context({}, interval=None))
    assert (manual["window_start"], manual["window_end"]) == ((END - timedelta(minutes=30)).isoformat(),
                                                              END.isoformat())


@pytest.mark.slow
def test_a_version_without_a_profile_is_a_configuration_error_after_the_others_are_stored(world) -> None:
    import crispflow_airflow.exceptions as exceptions
    from crispflow.monitoring.store import read_windows

    world["mlf"].set_registered_model_alias(world["model"], "canary", world["versions"][1])
    with pytest.raises(exceptions.GateConfigurationError,
                       match=re.escape("drift cannot be judged without a reference profile (other aliases were "
                                       f"stored): canary: {world['model']} v{world['versions'][1]}: no tag")):
        operator(pipeline=world["pipeline"], window_minutes=None, settings=None).execute(context({}))
    assert [w["alias"] for w in read_windows(world["root"], world["model"], alias=None)] == ["champion"]
