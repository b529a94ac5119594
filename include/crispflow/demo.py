"""The demo scenario, driven through Airflow's REST API exactly as a user or a scheduler client would."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from upath import UPath

from crispflow.airflow_api import AirflowAPIError
from crispflow.datasets import read_manifest
from crispflow.errors import CrispflowError
from crispflow.lake import Lake

if TYPE_CHECKING:
    from crispflow.airflow_api import AirflowAPI
    from crispflow.settings import Settings

INGEST = "ingest_validate"
TRAIN = "train_evaluate_register"
# The demo data's simulated months run through 2026; January-September is the training history.
DEMO_CONF = {"pipeline": "lending_club", "start": "2026-01-01", "end": "2026-10-01"}


def run_and_wait(api: AirflowAPI, dag_id: str, run_id: str | None, conf: dict[str, Any] | None = None,
                 timeout: float = 600) -> str:
    """Trigger `dag_id` (unless `run_id` names an existing run), wait for it, fail clearly if it failed."""
    api.wait_for_dag(dag_id)
    run_id = run_id or api.trigger(dag_id, conf=conf)
    state = api.wait_for_run(dag_id, run_id, timeout=timeout)
    if state != "success":
        tasks = {t["task_id"]: t["state"] for t in api.task_instances(dag_id, run_id)}
        raise CrispflowError(f"{dag_id} run {run_id} ended {state}: {tasks}; see its task logs in the UI")
    return run_id


def training_run_for(api: AirflowAPI, version_id: str, timeout: float = 120) -> str | None:
    """The training run the dataset's asset event started (matched on what its `resolve` task read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.request("GET", f"/api/v2/dags/{TRAIN}/dagRuns", params={"limit": 20})["dag_runs"]
        for run in runs:
            try:
                request = api.xcom(TRAIN, run["dag_run_id"], "resolve")
            except AirflowAPIError:
                continue  # not resolved yet
            if isinstance(request, dict) and request.get("dataset_version_id") == version_id:
                return run["dag_run_id"]
        time.sleep(3)
    return None


def run_demo(api: AirflowAPI, settings: Settings) -> dict[str, Any]:
    """Ingest, validate and publish the demo data; train, evaluate, register and bless a model on it."""
    ingest_run = run_and_wait(api, INGEST, None, DEMO_CONF)
    published = api.xcom(INGEST, ingest_run, "publish")
    version_id = published["dataset_version_id"]
    lake_root = UPath(settings.lake_url)
    manifest = read_manifest(Lake(lake_root), version_id, "lending_club")
    where = {key: str(lake_root / rel) for key, rel in manifest["files"].items()}
    summary: dict[str, Any] = {
        "ingest run": f"{api.base_url}/dags/{INGEST}/runs/{ingest_run}",
        "dataset version": version_id
        + ("" if published["created"] else " (already published by an earlier run: same content, same id)"),
        "rows": manifest["rows"],
        "quarantine reasons": manifest["quality"]["reasons"] or "none",
        "manifest": str(lake_root / published["manifest"]),
        "curated data": where["data"],
        "quarantine": where["quarantine"],
        "GX report (Data Docs)": where["quality_html"],
    }
    # A newly published version starts training through its asset event; otherwise train on it explicitly.
    train_run = training_run_for(api, version_id) if published["event_emitted"] else None
    train_run = run_and_wait(api, TRAIN, train_run, {"pipeline": "lending_club", "dataset_version_id": version_id},
                             timeout=1800)
    summary.update(_model_summary(api, settings, train_run))
    return summary


def _model_summary(api: AirflowAPI, settings: Settings, train_run: str) -> dict[str, Any]:
    from crispflow import registry

    registered = api.xcom(TRAIN, train_run, "register")
    verdict = api.xcom(TRAIN, train_run, "bless")
    mlf = registry.client(settings.mlflow_tracking_uri)
    name, version = registry.model_name("lending_club"), str(registered["version"])
    mv = mlf.get_model_version(name, version)
    experiment = mlf.get_run(mv.run_id).info.experiment_id
    champion = registry.alias_version(mlf, name, "champion")
    base = settings.mlflow_tracking_uri.rstrip("/")
    run_url = f"{base}/#/experiments/{experiment}/runs/{mv.run_id}"
    return {
        "training run": f"{api.base_url}/dags/{TRAIN}/runs/{train_run}",
        "model": f"{name} v{version} ({registered['config_id']}, threshold {registered['threshold']:.3f})",
        "blessed": f"{verdict['blessed']} ({verdict['mode']})"
        + ("" if verdict["blessed"] else f": {'; '.join(verdict['reasons'])}"),
        "champion": f"v{champion.version}" if champion else "none",
        "MLflow run": run_url,
        "MLflow model version": f"{base}/#/models/{name}/versions/{version}",
        "verdict artifact": f"{run_url} → artifacts/blessing/v{version}.json",
        "model card": f"{run_url} → artifacts/model_card/v{version}.html (and .md)",
    }
