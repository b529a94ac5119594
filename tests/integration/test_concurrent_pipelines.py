"""Several pipelines side by side on a real Airflow (api-server, scheduler and dag-processor as processes, the
LocalExecutor, SQLite) and a real MLflow server: three pipelines ingested and published at the same time get three
training runs — one per `<pipeline>/<dataset_version_id>` partition key, each seeing only its own event — and three
registered models; publishing the same data again emits no event, so no fourth run can appear.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml
from support.servers import free_port, stop_process
from support.stack import clean_env, wait_for

from crispflow.model import registry
from crispflow.pools import POOLS
from crispflow.settings import Settings
from crispflow.stack.airflow_api import AirflowAPI
from crispflow.stack.credentials import ADMIN_USER, Secrets, write_passwords_file
from crispflow.stack.demo import training_run_for
from crispflow.stack.local import airflow_env, venv_bin
from crispflow.stack.paths import StackPaths
from crispflow.stack.ports import Ports

pytest_plugins = ["support.mlflow_server"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ("side_a", "side_b", "side_c")
HISTORY = {"start": "2026-01-01", "end": "2026-10-01"}
TRAIN, INGEST = "train_evaluate_register", "ingest_validate"
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def small_spec(name: str) -> dict:
    """The demo spec under another name, with one cheap candidate configuration: the real steps, quickly."""
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    spec["name"] = name
    spec["training"]["candidates"] = [{"name": "logreg", "estimator": "logistic_regression", "grid": {"C": [1.0]}}]
    spec["training"]["search_budget"] = 1
    spec["training"]["cv_folds"] = 3
    spec["blessing"]["bootstrap_samples"] = 200
    spec["sources"] = [{**s, "url": (ROOT / s["url"]).as_uri()} for s in spec["sources"]]
    return spec


@dataclass(frozen=True)
class Airflow:
    """The running Airflow: its REST client and its metadata DB (read by the test, never by tasks)."""

    api: AirflowAPI
    db: Path

    def rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute(sql).fetchall()

    def curated_events(self) -> list[tuple[str | None, dict]]:
        """(partition key, extra) of every `crispflow_curated_dataset` asset event, oldest first. (Read from the
        DB: Airflow 3.3.2's GET /api/v2/assets/events answers 500 while an event's created run is still queued,
        its start_date null failing the response model.)"""
        return [(key, json.loads(extra)) for key, extra in self.rows(
            "SELECT e.partition_key, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'crispflow_curated_dataset' ORDER BY e.id")]

    def consumed(self, run_id: str) -> list[str | None]:
        """The partition keys of the asset events a training run consumed."""
        return [k for (k,) in self.rows(
            "SELECT e.partition_key FROM dag_run d JOIN dagrun_asset_event x ON x.dag_run_id = d.id "
            f"JOIN asset_event e ON e.id = x.event_id WHERE d.dag_id = '{TRAIN}' AND d.run_id = '{run_id}'")]


@pytest.fixture(scope="module")
def airflow(mlflow_server, tmp_path_factory) -> Iterator[Airflow]:
    """Airflow's api-server, scheduler and dag-processor on a fresh home, the project's DAGs, three pipelines."""
    base = tmp_path_factory.mktemp("side_by_side")
    pipelines = base / "pipelines"
    pipelines.mkdir()
    for name in PIPELINES:
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(small_spec(name)))
    home = base / "home"
    settings = replace(Settings.from_env(), project_root=ROOT, home=home, pipelines_dir=pipelines,
                       lake_url=(base / "lake").as_uri(), predictions_url=(base / "predictions").as_uri(),
                       ledger_url=f"sqlite:///{base / 'ledger.db'}", mlflow_tracking_uri=mlflow_server.url)
    paths = StackPaths(home)
    paths.create()
    creds = Secrets.generate()
    write_passwords_file(paths, creds)
    dags = base / "dags"  # the two DAGs under test only: no scheduled run of another DAG publishes or trains
    dags.mkdir()
    for dag_id in (INGEST, TRAIN):
        (dags / f"{dag_id}.py").symlink_to(ROOT / "dags" / f"{dag_id}.py")
    port = free_port()
    env = clean_env() | airflow_env(settings, Ports(airflow=port, mlflow=0, serve=0), creds) | {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "MLFLOW_TRACKING_URI": mlflow_server.url, "CRISPFLOW_PIPELINES_DIR": str(pipelines),
        "CRISPFLOW_MODEL_CACHE": str(base / "cache"), "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2"}
    exe = str(venv_bin() / "airflow")
    subprocess.run([exe, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    for name, slots, info in POOLS:
        subprocess.run([exe, "pools", "set", name, str(slots), info], env=env, check=True, capture_output=True,
                       timeout=120)
    procs = []
    try:
        for component in COMPONENTS:
            log = (paths.logs / f"{component}.log").open("wb")
            procs.append(subprocess.Popen([exe, component], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        api = AirflowAPI(f"http://127.0.0.1:{port}", ADMIN_USER, creds.admin_password, retries=30)
        api.wait_for_dag(INGEST, timeout=240)
        api.wait_for_dag(TRAIN, timeout=240)
        yield Airflow(api, paths.airflow_db)
    finally:
        for proc in procs:
            stop_process(proc)
        for component in COMPONENTS:
            log_file = paths.logs / f"{component}.log"
            if log_file.exists() and os.environ.get("CRISPFLOW_TEST_SHOW_LOGS"):
                print(log_file.read_text()[-5000:])


def test_three_pipelines_published_at_once_get_three_trainings(airflow: Airflow, mlflow_server) -> None:
    api = airflow.api
    ingests = {name: api.trigger(INGEST, conf={"pipeline": name, **HISTORY}) for name in PIPELINES}  # at once
    for name, run_id in ingests.items():
        assert api.wait_for_run(INGEST, run_id, timeout=900) == "success", name
    published = {name: api.xcom(INGEST, run_id, "publish") for name, run_id in ingests.items()}
    assert all(p["event_emitted"] and p["pipeline"] == name for name, p in published.items())
    keys = {f"{name}/{p['dataset_version_id']}": name for name, p in published.items()}
    assert len(keys) == 3
    events = airflow.curated_events()
    assert sorted(key for key, _ in events) == sorted(keys)
    assert all(keys[key] == extra["pipeline"] for key, extra in events)

    # The scheduler creates one training run per key (none coalesced), each consuming only its own event.
    runs = wait_for("three training runs", lambda: len(api.dag_runs(TRAIN)) >= 3 and api.dag_runs(TRAIN), 300, poll=3)
    assert len(runs) == 3 and sorted(r["partition_key"] for r in runs) == sorted(keys)
    for run in runs:
        assert airflow.consumed(run["dag_run_id"]) == [run["partition_key"]]
    assert api.dag_runs(TRAIN, limit=1, newest_first=True)[0]["dag_run_id"] == runs[-1]["dag_run_id"]
    for run in runs:  # what the demo uses to follow its dataset into training
        name = keys[run["partition_key"]]
        found = training_run_for(api, published[name]["dataset_version_id"], timeout=30, pipeline=name)
        assert found == run["dag_run_id"]

    # Each run trains its own pipeline's version into its own registered model.
    mlf = registry.client(mlflow_server.url)
    for run in runs:
        state = api.wait_for_run(TRAIN, run["dag_run_id"], timeout=1200)
        tasks = {t["task_id"]: t["state"] for t in api.task_instances(TRAIN, run["dag_run_id"])}
        assert state == "success", tasks
        name = keys[run["partition_key"]]
        request = api.xcom(TRAIN, run["dag_run_id"], "resolve")
        assert (request["pipeline"], request["dataset_version_id"], request["source"]) == (
            name, published[name]["dataset_version_id"], "asset event")
        registered = api.xcom(TRAIN, run["dag_run_id"], "register")
        mv = mlf.get_model_version(registry.model_name(name), str(registered["version"]))
        assert mv.tags["crispflow.dataset_version_id"] == published[name]["dataset_version_id"]
        assert mv.tags["crispflow.run_id"] == run["dag_run_id"]
    assert {m.name for m in mlf.search_registered_models()} >= {registry.model_name(n) for n in PIPELINES}

    # The same data again: the same version, already published by another run, so no event (and no run).
    again = api.trigger(INGEST, conf={"pipeline": PIPELINES[0], **HISTORY})
    assert api.wait_for_run(INGEST, again, timeout=600) == "success"
    repeat = api.xcom(INGEST, again, "publish")
    assert repeat["dataset_version_id"] == published[PIPELINES[0]]["dataset_version_id"]
    assert not repeat["event_emitted"] and not repeat["created"]
    assert len(airflow.curated_events()) == 3
