"""monitor_drift through Airflow (`dag.test()`) against a real MLflow server and a real prediction log.

A small model is fitted on the demo data's first half year and registered (champion, and a second version as
canary), each with its reference profile logged the way training logs it. Traffic is written with the real
PredictionLog: months 07-09 (no drift, with feedback) in one hour, months 10-12 (the demo's shifted months) in
the next. Each hourly run judges its own data interval.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crispflow.model import registry
from crispflow.model.features import features, labels
from crispflow.model.reference_profile import build_profile
from crispflow.monitoring.store import read_windows, window_key
from crispflow.monitoring.windows import REFERENCE_TAG, ReferenceProfileMissing, load_reference_profile
from crispflow.predictions.writer import PredictionLog
from crispflow.settings import Settings, project_root
from crispflow.spec import load_spec

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "t_drift"
MODEL = registry.model_name(PIPELINE)
NUMERIC = ["int_rate", "annual_inc", "revol_util", "funded_amnt"]
HOUR = timedelta(hours=1)
CALM_END = datetime(2026, 11, 20, 10, tzinfo=UTC)  # [09:00, 10:00): months 07-09
SHIFT_END = CALM_END + HOUR  # [10:00, 11:00): months 10-12
EMPTY_END = CALM_END + 3 * HOUR  # nothing logged


@pytest.fixture(scope="module")
def env(mlflow_server, airflow_db, tmp_path_factory):
    import yaml

    keys = ("MLFLOW_TRACKING_URI", "CRISPFLOW_LAKE_URL", "CRISPFLOW_PREDICTIONS_URL", "CRISPFLOW_PIPELINES_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    pipelines = tmp_path_factory.mktemp("pipelines")  # the drift thresholds come from PIPELINE's spec
    demo = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    for name in ("lending_club", PIPELINE):
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump({**demo, "name": name}))
    os.environ["CRISPFLOW_PIPELINES_DIR"] = str(pipelines)
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.url
    os.environ["CRISPFLOW_LAKE_URL"] = tmp_path_factory.mktemp("lake").as_uri()
    os.environ.pop("CRISPFLOW_PREDICTIONS_URL", None)
    mlflow.set_tracking_uri(mlflow_server.url)
    yield registry.client(mlflow_server.url)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def world(env):
    """Versions 1 (champion) and 2 (canary) with reference profiles, 3 without; traffic for two hours."""
    mlf = env
    spec = load_spec("lending_club")
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")
    month = loans["application_month"].dt.month
    train = loans[month <= 6]
    versions, models = [], {}
    for i, c in enumerate((1.0, 0.1, 0.01), start=1):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))
        model.fit(train[NUMERIC], labels(spec, train))
        run_key = f"test/{PIPELINE}/v{i}"
        run_id = registry.find_or_create_run(mlf, PIPELINE, run_key, "train")
        reg = registry.register(mlf, name=MODEL, run_id=run_id, run_key=run_key, model=model,
                                example=train[NUMERIC].head(20), tags={"crispflow.blessed": "true"})
        if i < 3:  # as training logs it (crispflow.model.modelling.log_reference_profile)
            profile = build_profile(spec, features(spec, train), scores=model.predict_proba(train[NUMERIC])[:, 1],
                                    labels=labels(spec, train))
            path = f"reference_profile/v{reg.version}.json"
            mlf.log_text(run_id, json.dumps(profile), path)
            mlf.set_model_version_tag(MODEL, reg.version, REFERENCE_TAG, f"runs:/{run_id}/{path}")
        versions.append(reg.version)
        models[reg.version] = model
    v1, v2, _ = versions
    registry.set_alias(mlf, MODEL, "champion", v1)
    registry.set_alias(mlf, MODEL, "canary", v2)

    def rows(frame: pd.DataFrame, version: str, alias: str, start: datetime, prefix: str) -> list[dict]:
        x, scores = features(spec, frame), models[version].predict_proba(frame[NUMERIC])[:, 1]
        step = HOUR / (len(frame) + 1)
        return [{"request_id": f"{prefix}-{i}", "ts": start + step * (i + 1), "version": version, "alias": alias,
                 "served": True, "entity": str(frame["loan_id"].iat[i]), "score": float(scores[i]),
                 "latency_ms": 2.0, "status": "ok", "features": x.iloc[i].to_dict()} for i in range(len(frame))]

    calm = loans[month.between(7, 9)].sample(400, random_state=1)
    shifted = loans[month >= 10].sample(600, random_state=2)
    log = PredictionLog(Settings.from_env().predictions_url, MODEL)
    log.log(rows(calm, v1, "champion", CALM_END - HOUR, "calm"))
    log.log(rows(shifted[:400], v1, "champion", SHIFT_END - HOUR, "shift"))
    log.log(rows(shifted[400:], v2, "canary", SHIFT_END - HOUR, "canary"))
    y = labels(spec, calm).astype(int)
    log.log_feedback([{"request_id": f"calm-{i}", "label": int(y[i]), "ts": CALM_END + timedelta(minutes=5)}
                      for i in range(len(calm))])
    log.close()
    assert log.written == 1000 and log.dropped == 0
    return {"v1": v1, "v2": v2, "v3": versions[2]}


def run(logical_date: datetime, conf: dict | None = None, expect: str = "success"):
    """One monitor_drift run for PIPELINE (a manual run names it: one mapped `compute_drift`, index 0)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors
    dr = bag.dags["monitor_drift"].test(logical_date=logical_date, run_conf={"pipeline": PIPELINE, **(conf or {})})
    tis = {(ti.task_id, ti.map_index): ti for ti in dr.get_task_instances()}
    assert set(tis) == {("pipelines", -1), ("compute_drift", 0)}, tis
    ti = tis[("compute_drift", 0)]
    assert dr.state == expect, ti.state
    return ti.xcom_pull(task_ids="compute_drift", map_indexes=0) if expect == "success" else ti


def by_alias(out: dict) -> dict[str, dict]:
    return {s["alias"]: s for s in out["summaries"]}


def test_a_calm_hour_has_no_drift_and_a_shifted_hour_has_drift(env, world) -> None:
    mlf = env
    calm = run(CALM_END)
    assert (calm["window_start"], calm["window_end"]) == ((CALM_END - HOUR).isoformat(), CALM_END.isoformat())
    champion, canary = by_alias(calm)["champion"], by_alias(calm)["canary"]
    assert champion["status"] == "no_drift" and not champion["drift"] and champion["rows"] == 400
    assert champion["labelled_rows"] == 400  # feedback came, and judged with the features in one family
    assert canary["version"] == world["v2"] and canary["status"] == "insufficient_data" and canary["rows"] == 0

    shifted = run(SHIFT_END)
    champion, canary = by_alias(shifted)["champion"], by_alias(shifted)["canary"]
    assert champion["status"] == "drift" and champion["drift"] and champion["rows"] == 400
    assert "int_rate" in champion["drifted_features"] and champion["prediction_drift"]
    assert canary["status"] == "drift" and canary["rows"] == 200 and canary["version"] == world["v2"]

    for summary in (*calm["summaries"], *shifted["summaries"]):
        report = Path(summary["report"].removeprefix("file://"))
        assert json.loads(report.read_text())["status"] == summary["status"]
        assert "<svg" in (report.parent / "report.html").read_text() or summary["rows"] == 0
        stored = json.loads(mlflow.artifacts.load_text(summary["mlflow_artifact"]))
        assert stored["status"] == summary["status"] and stored["window"]["version"] == summary["version"]
    run_id = mlf.get_model_version(MODEL, world["v1"]).run_id
    listed = {a.path for a in mlf.list_artifacts(run_id, "drift")}
    assert f"drift/{window_key(SHIFT_END)}-champion.json" in listed
    assert f"drift/{window_key(SHIFT_END)}-champion.html" in listed
    # what the DriftSensor reads: the champion's windows, oldest first
    windows = read_windows(_root(), MODEL, alias="champion")
    assert [w["drift"] for w in windows[-2:]] == [False, True]


def _root():
    from crispflow.predictions.store import root_of

    return root_of(Settings.from_env().predictions_url)


def test_rerunning_a_window_stores_the_same_summary(env, world) -> None:
    first = run(CALM_END)
    second = run(CALM_END)
    assert first["summaries"] == second["summaries"]
    assert len(read_windows(_root(), MODEL, alias="champion")) == len(
        {w["window_end"] for w in read_windows(_root(), MODEL, alias="champion")})


def test_a_version_without_a_reference_profile_fails_after_the_others_are_stored(env, world) -> None:
    mlf = env
    with pytest.raises(ReferenceProfileMissing, match=rf"{MODEL} v{world['v3']}: no tag"):
        load_reference_profile(mlf, MODEL, world["v3"])
    registry.set_alias(mlf, MODEL, "canary", world["v3"])
    try:
        ti = run(EMPTY_END, expect="failed")
        assert ti.try_number == 1  # a misconfiguration is not retried
        newest = read_windows(_root(), MODEL, alias="champion")[-1]
        assert newest["window_end"] == EMPTY_END.isoformat() and newest["status"] == "insufficient_data"
        assert not [w for w in read_windows(_root(), MODEL, alias="canary") if w["version"] == world["v3"]]
    finally:
        registry.set_alias(mlf, MODEL, "canary", world["v2"])


def test_a_profile_tag_pointing_nowhere_is_a_clear_error(env, world) -> None:
    mlf = env
    run_id = mlf.get_model_version(MODEL, world["v3"]).run_id
    mlf.set_model_version_tag(MODEL, world["v3"], REFERENCE_TAG, f"runs:/{run_id}/reference_profile/gone.json")
    try:
        with pytest.raises(ReferenceProfileMissing, match="cannot be found"):
            load_reference_profile(mlf, MODEL, world["v3"])
        mlf.log_text(run_id, json.dumps({"format": "something else"}), "reference_profile/bad.json")
        mlf.set_model_version_tag(MODEL, world["v3"], REFERENCE_TAG, f"runs:/{run_id}/reference_profile/bad.json")
        with pytest.raises(ReferenceProfileMissing, match="format"):
            load_reference_profile(mlf, MODEL, world["v3"])
    finally:
        mlf.delete_model_version_tag(MODEL, world["v3"], REFERENCE_TAG)


def test_a_manual_run_judges_the_minutes_before_it_and_refuses_bad_params(env, world) -> None:
    out = run(None, {"window_minutes": 30})
    start, end = (datetime.fromisoformat(out[k]) for k in ("window_start", "window_end"))
    assert end - start == timedelta(minutes=30) and abs(end - datetime.now(UTC)) < timedelta(minutes=5)
    assert by_alias(out)["champion"]["status"] == "insufficient_data"
    assert np.isclose(by_alias(out)["champion"]["drift_share"], 0.0)
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="alpha"):  # out of bounds: refused when the run is created
        run(None, {"settings": {"alpha": 5}}, expect="failed")
    run(None, {"settings": {"alpha": 0.001}}, expect="failed")  # in bounds but looser than the spec: the task fails


def test_a_scheduled_run_is_mapped_over_the_pipelines_with_a_champion(env, world, tmp_path, monkeypatch) -> None:
    """No `pipeline` param (a scheduled run): one `compute_drift` per pipeline spec whose model has a champion;
    a spec without a registered model is left out. Unknown conf keys are refused before anything runs."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    demo = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    for name in (PIPELINE, "t_unserved"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**demo, "name": name}))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(tmp_path))
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["monitor_drift"]
    dr = dag.test(logical_date=CALM_END)
    tis = {(ti.task_id, ti.map_index): ti for ti in dr.get_task_instances()}
    assert dr.state == "success" and set(tis) == {("pipelines", -1), ("compute_drift", 0)}, tis
    assert tis[("pipelines", -1)].xcom_pull(task_ids="pipelines") == [PIPELINE]
    assert tis[("compute_drift", 0)].rendered_map_index == PIPELINE
    out = tis[("compute_drift", 0)].xcom_pull(task_ids="compute_drift", map_indexes=0)
    assert out["model"] == MODEL

    bad = DagBag(dag_folder=str(ROOT / "dags")).dags["monitor_drift"].test(run_conf={"pipline": PIPELINE})
    assert bad.state == "failed"
    assert {ti.task_id: ti.state for ti in bad.get_task_instances()}["pipelines"] == "failed"
