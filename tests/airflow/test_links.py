"""Operator extra links: computed from a task's result (pure, from dicts), stored by the worker when the task
finishes and read back the way the api-server reads them; the global MLflow links apply only to results with an
`mlflow` reference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

BASE = "http://airflow.example:8080"
MLFLOW_UI = "http://mlflow.example:5000"
MODEL = "crispflow-lending_club"
REF = {"model": MODEL, "version": "3", "run_id": "abc123", "experiment_id": "7"}


@pytest.fixture(autouse=True)
def urls(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE + "/")
    monkeypatch.setenv("CRISPFLOW_MLFLOW_UI_URL", MLFLOW_UI + "/")


def href(link_class: str, result: dict, **fields) -> str:
    import crispflow_airflow.links as links

    return getattr(links, link_class)().href(result, SimpleNamespace(**fields))


def test_data_docs_of_a_published_version_and_of_a_judged_batch() -> None:
    published = {"pipeline": "lending_club", "dataset_version_id": "ds-0123456789abcdef", "batch_id": "b-1"}
    assert href("DataDocsLink", published) == f"{BASE}/crispflow/data-docs/lending_club/ds-0123456789abcdef"
    judged = {"batch_id": "b-20260101", "success": True}
    docs = f"{BASE}/crispflow/data-docs/lending_club"
    assert href("DataDocsLink", judged, pipeline="lending_club") == f"{docs}/b-20260101"
    # a failed gate pushes no result: the task's rendered fields still name the batch; a template does not
    assert href("DataDocsLink", {}, pipeline="lending_club", batch_id="b-2") == f"{docs}/b-2"
    assert href("DataDocsLink", {}, pipeline="{{ params.pipeline }}", batch_id="b-2") == ""


def test_mlflow_links_of_a_version_and_its_run(monkeypatch) -> None:
    assert href("MlflowModelVersionLink", {"mlflow": REF}) == f"{MLFLOW_UI}/#/models/{MODEL}/versions/3"
    assert href("MlflowRunLink", {"mlflow": REF}) == f"{MLFLOW_UI}/#/experiments/7/runs/abc123"
    assert href("MlflowRunLink", {"mlflow": {**REF, "experiment_id": None}}) == f"{MLFLOW_UI}/#/runs/abc123"
    assert href("MlflowRunLink", {"version": "3"}) == href("MlflowModelVersionLink", {"version": "3"}) == ""
    monkeypatch.delenv("CRISPFLOW_MLFLOW_UI_URL")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")  # the fallback
    assert href("MlflowRunLink", {"mlflow": REF}) == "http://tracking:5000/#/experiments/7/runs/abc123"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")  # no UI to open: no link
    assert href("MlflowModelVersionLink", {"mlflow": REF}) == ""


def test_model_card_and_ledger_entry_links() -> None:
    assert href("ModelCardLink", {"version": "3", "mlflow": REF}) == f"{BASE}/crispflow/models/{MODEL}/versions/3"
    deployed = {"seq": 4, "action": "deploy_canary", "model": MODEL}
    assert href("LedgerEntryLink", deployed) == f"{BASE}/crispflow/promotions/{MODEL}#seq-4"
    # the canary analysis: the move it made, the model from the task's pipeline; no move, no link
    judged = {"decision": "promote", "ledger": {"seq": 5, "action": "promote"}}
    assert href("LedgerEntryLink", judged, pipeline="lending_club") == f"{BASE}/crispflow/promotions/{MODEL}#seq-5"
    assert href("LedgerEntryLink", {"decision": "continue", "ledger": None}, pipeline="lending_club") == ""


def test_drift_report_and_alert_links() -> None:
    summaries = [{"alias": "champion", "window_end": "2026-03-01T02:00:00+00:00"},
                 {"alias": "canary", "window_end": "2026-03-01T02:00:00+00:00"}]
    monitored = {"model": MODEL, "summaries": summaries}
    assert href("DriftReportLink", monitored) == f"{BASE}/crispflow/drift/{MODEL}/reports/champion/20260301T020000Z"
    assert href("CanaryDriftReportLink", monitored) == f"{BASE}/crispflow/drift/{MODEL}/reports/canary/20260301T020000Z"
    assert href("CanaryDriftReportLink", {"model": MODEL, "summaries": summaries[:1]}) == ""
    episode = {"model": MODEL, "episode_id": "champion-20260301T020000Z"}
    expected = f"{BASE}/crispflow/drift/{MODEL}#alert-{MODEL}.champion-20260301T020000Z"
    assert href("DriftAlertLink", episode) == expected
    assert href("DriftAlertLink", {"model": MODEL, "key": f"{MODEL}.champion-20260301T020000Z"}) == expected


def test_a_path_segment_cannot_escape_its_page() -> None:
    assert href("DataDocsLink", {"pipeline": "lending_club", "dataset_version_id": "../../etc"}) == (
        f"{BASE}/crispflow/data-docs/lending_club/..%2F..%2Fetc")


def test_links_are_stored_by_the_worker_and_read_back_by_the_api_server(run_alone, lake, stage_january) -> None:
    """A failed quality gate (no result) still links its Data Docs: the worker stores the link when the task
    finishes; the api-server's deserialized task reads it; the global MLflow links are empty for it."""
    from airflow.models.serialized_dag import SerializedDagModel

    from crispflow_airflow.operators.quality_gate import DataQualityGateOperator

    batch_id = stage_january(lake, lambda m: m.drop(columns=["int_rate"]))  # the gate fails this batch
    dr, ti = run_alone(lambda: DataQualityGateOperator(task_id="validate", pipeline="{{ params.pipeline }}",
                                                       batch_id="{{ params.batch_id }}"),
                       {"pipeline": "lending_club", "batch_id": ""}, {"batch_id": batch_id})
    assert ti.state == "failed"
    assert ti.xcom_pull(task_ids="validate", key="_link_DataDocsLink") == (
        f"{BASE}/crispflow/data-docs/lending_club/{batch_id}")
    task = SerializedDagModel.get_dag(dr.dag_id).get_task("validate")
    assert {"GX Data Docs", "MLflow run", "MLflow model version"} <= set(task.extra_links)
    assert task.get_extra_links(ti, "GX Data Docs") == f"{BASE}/crispflow/data-docs/lending_club/{batch_id}"
    assert task.get_extra_links(ti, "MLflow run") == ""


def test_global_mlflow_links_apply_to_task_results_with_an_mlflow_reference(run_alone) -> None:
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.sdk import task

    def make() -> None:
        @task(task_id="register")
        def register() -> dict:
            return {"version": "3", "mlflow": REF}

        @task(task_id="other")
        def other() -> dict:
            return {"version": "3"}

        register()
        other()

    dr, _ = run_alone(make, {})
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    dag = SerializedDagModel.get_dag(dr.dag_id)
    registered, other = dag.get_task("register"), dag.get_task("other")
    assert registered.get_extra_links(tis["register"], "MLflow run") == f"{MLFLOW_UI}/#/experiments/7/runs/abc123"
    assert registered.get_extra_links(tis["register"], "MLflow model version") == (
        f"{MLFLOW_UI}/#/models/{MODEL}/versions/3")
    assert other.get_extra_links(tis["other"], "MLflow run") == ""
