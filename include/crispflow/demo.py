"""The demo scenario, driven through Airflow's REST API exactly as a user or a scheduler client would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upath import UPath

from crispflow.datasets import read_manifest
from crispflow.errors import CrispflowError
from crispflow.lake import Lake

if TYPE_CHECKING:
    from crispflow.airflow_api import AirflowAPI
    from crispflow.settings import Settings

INGEST = "ingest_validate"
# The demo data's simulated months run through 2026; January-September is the training history.
DEMO_CONF = {"pipeline": "lending_club", "start": "2026-01-01", "end": "2026-10-01"}


def run_ingest(api: AirflowAPI, conf: dict[str, Any], timeout: float = 600) -> tuple[str, dict[str, Any]]:
    """Trigger `ingest_validate` through REST, wait, and return (run_id, the publish task's result)."""
    api.wait_for_dag(INGEST)
    run_id = api.trigger(INGEST, conf=conf)
    state = api.wait_for_run(INGEST, run_id, timeout=timeout)
    if state != "success":
        tasks = {t["task_id"]: t["state"] for t in api.task_instances(INGEST, run_id)}
        raise CrispflowError(f"{INGEST} run {run_id} ended {state}: {tasks}; see its task logs in the UI")
    return run_id, api.xcom(INGEST, run_id, "publish")


def run_demo(api: AirflowAPI, settings: Settings) -> dict[str, Any]:
    """Ingest, validate and publish the demo data; return where everything is."""
    run_id, published = run_ingest(api, DEMO_CONF)
    lake = Lake(UPath(settings.lake_url))
    manifest = read_manifest(lake, published["dataset_version_id"], "lending_club")
    where = {key: str(UPath(settings.lake_url) / rel) for key, rel in manifest["files"].items()}
    return {
        "ingest run": f"{api.base_url}/dags/{INGEST}/runs/{run_id}",
        "dataset version": manifest["dataset_version_id"]
        + ("" if published["created"] else " (already published by an earlier run: same content, same id)"),
        "rows": manifest["rows"],
        "quarantine reasons": manifest["quality"]["reasons"] or "none",
        "manifest": str(UPath(settings.lake_url) / published["manifest"]),
        "curated data": where["data"],
        "quarantine": where["quarantine"],
        "GX report (Data Docs)": where["quality_html"],
    }
