"""The real local stack, end to end: `crispflow up` → status → REST (auth, runs, XCom) → `crispflow down`.

One stack per module, in a temporary home on free ports (never 8080/5000/8000), running the project's own
DAGs: `ingest_validate` is triggered, awaited and read back (task instances, XCom, the manifest in the lake).
`down` always runs at teardown.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.permissions import loose_entries
from support.stack import Stack, cli, started_stack

from crispflow.data.datasets import read_manifest
from crispflow.lake import Lake
from crispflow.stack.demo import Progress
from crispflow.stack.ports import port_in_use
from crispflow.stack.processes import group_members, is_alive

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The demo data's (simulated) application months are those of 2026 (include/data/ATTRIBUTION.md): months 1-9.
INGEST_CONF = {"pipeline": "lending_club", "start": "2026-01-01", "end": "2026-10-01"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = time.monotonic()
    with started_stack(tmp_path_factory.mktemp("stack")) as live:
        print(f"\ncrispflow up became healthy in {time.monotonic() - started:.0f} s")
        yield live


def test_up_reports_a_healthy_stack(live: Stack) -> None:
    status = live.status()
    assert status["healthy"] is True, status
    assert {p["name"] for p in status["processes"]} == {
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "model-server",
    }
    assert all(p["alive"] and p["healthy"] and p["pid"] for p in status["processes"])
    assert status["airflow_url"] == f"http://127.0.0.1:{live.ports.airflow}"
    assert status["mlflow_url"] == f"http://127.0.0.1:{live.ports.mlflow}"
    assert status["login"]["username"] == "admin"
    in_ci = subprocess.run([cli(), "status", "--json"], env=live.env | {"CI": "true"}, capture_output=True, text=True,
                           timeout=60, check=False)
    assert json.loads(in_ci.stdout)["login"]["password"] is None  # CI logs keep no password
    assert json.loads(live.run("status", "--json", "--show-secrets").stdout)["login"]["password"] \
        == live.secrets.admin_password
    assert status["paths"]["home"] == str(live.home)
    assert requests.get(f"{status['mlflow_url']}/health", timeout=5).status_code == 200
    assert status["serve_url"] == f"http://127.0.0.1:{live.ports.serve}"
    assert requests.get(f"{status['serve_url']}/health", timeout=5).status_code == 200
    # the model server `up` started takes the tokens `up` generated, and nothing else
    admin = {"Authorization": f"Bearer {live.secrets.serve_admin_token}"}
    client = {"Authorization": f"Bearer {live.secrets.serve_client_token}"}
    assert requests.get(f"{status['serve_url']}/models", timeout=5).status_code == 401
    assert requests.get(f"{status['serve_url']}/models", headers=client, timeout=5).status_code == 403
    assert requests.get(f"{status['serve_url']}/models", headers=admin, timeout=5).status_code == 200
    assert f"Model server  {status['serve_url']}" in live.run("status").stdout


def test_up_again_is_a_no_op(live: Stack) -> None:
    before = {r.name: r.pid for r in live.pid_records()}
    started = time.monotonic()
    result = live.run("up", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    assert time.monotonic() - started < 30
    assert {r.name: r.pid for r in live.pid_records()} == before


def test_the_api_needs_a_token(live: Stack) -> None:
    base = f"http://127.0.0.1:{live.ports.airflow}"
    assert requests.get(f"{base}/api/v2/dags", timeout=10).status_code == 401
    wrong = requests.post(f"{base}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=10)
    assert wrong.status_code == 401
    api = live.api()
    assert api.token()
    assert "dags" in api.request("GET", "/api/v2/dags")


def test_ingest_validate_publishes_a_dataset_version(live: Stack) -> None:
    api = live.api()
    api.wait_for_dag("ingest_validate", timeout=180)
    run_id = api.trigger("ingest_validate", INGEST_CONF)
    said: list[str] = []
    progress = Progress("lending_club", said.append)  # what `crispflow demo` prints while it waits
    progress.phase("ingest")
    state = progress.wait_for_run(api, "ingest_validate", run_id, timeout=300)
    progress.end_phase()
    tasks = {t["task_id"]: t["state"] for t in api.task_instances("ingest_validate", run_id)}
    assert state == "success", f"run {run_id} {state}: {tasks}; logs under {live.home / 'airflow' / 'logs'}"
    assert tasks == {"ingest": "success", "validate": "success", "publish": "success"}
    assert said[0].endswith("lending_club] phase: ingest")
    assert said[-1].endswith(f"ingest_validate run {run_id}: success")
    assert all(re.match(r"\[ *\d+:\d\d lending_club\] ", line) for line in said), said
    assert list(progress.timings) == ["ingest"]

    version_id = api.xcom("ingest_validate", run_id, "publish")["dataset_version_id"]
    manifest = read_manifest(Lake(live.home / "lake"), version_id, "lending_club")
    assert manifest["dataset_version_id"] == version_id
    assert manifest["pipeline"] == "lending_club"
    rows = manifest["rows"]
    assert rows["in"] == rows["published"] + rows["quarantined"]


def test_the_home_is_private_after_a_run(live: Stack) -> None:
    """Everything the stack wrote (lake with personal data, ledger, MLflow store and artifacts, Airflow's DB, task
    logs, process logs, PID files, secrets) is 0700 folders and 0600 files: nothing for other users."""
    api = live.api()
    runs = api.request("GET", "/api/v2/dags/ingest_validate/dagRuns")["dag_runs"]
    assert any(run["state"] == "success" for run in runs), "needs the ingest run of the test above"
    assert list((live.home / "airflow" / "logs").rglob("*.log")), "no task log was written"
    assert list((live.home / "lake").rglob("*.parquet")), "nothing in the lake"
    assert loose_entries(live.home) == []


def test_a_deferred_drift_sensor_survives_a_triggerer_restart(live: Stack) -> None:
    """A watch_drift run waits in the triggerer; the triggerer is killed; drift arrives; `up` restarts the
    triggerer, whose new trigger instance re-reads the store and fires the episode exactly once."""
    import signal
    from datetime import UTC, datetime, timedelta

    from crispflow.monitoring import store

    api = live.api()
    api.wait_for_dag("watch_drift", timeout=180)
    # The hourly runs watch every pipeline with a champion (none here): a run for the demo pipeline names it.
    run_id = api.trigger("watch_drift", conf={"pipeline": "lending_club"})
    deadline = time.monotonic() + 180
    while True:
        assert time.monotonic() < deadline, "the watch_drift sensor never deferred"
        states = {t["task_id"]: t["state"] for t in api.task_instances("watch_drift", run_id)}
        if states.get("watch") == "deferred":
            break
        time.sleep(2)

    triggerer = next(r for r in live.pid_records() if r.name == "airflow-triggerer")
    os.killpg(triggerer.pid, signal.SIGKILL)  # a crash, not a clean stop
    now = datetime.now(UTC)
    for hours_ago in (2, 1):  # two drifted windows of the champion: k=2 of n=3
        start, end = now - timedelta(hours=hours_ago), now - timedelta(hours=hours_ago - 1)
        summary = {"model": "crispflow-lending_club", "alias": "champion", "version": "1",
                   "window_start": start.isoformat(), "window_end": end.isoformat(), "rows": 500,
                   "labelled_rows": 100, "status": "drift", "drift": True, "drift_share": 0.3,
                   "drifted_features": ["int_rate"], "prediction_drift": False, "report": "r.json",
                   "statistics": {"int_rate": {"test": "ks", "statistic": 0.2, "p_adjusted": 1e-9, "psi": 0.2}}}
        store.write_window(live.home / "lake" / "predictions", summary, {}, "")
    assert live.run("up", timeout=300).returncode == 0  # starts the missing triggerer only

    assert api.wait_for_run("watch_drift", run_id, timeout=240) == "success"
    fired = api.xcom("watch_drift", run_id, "watch", map_index=0)  # mapped over pipelines: one here
    assert fired["features"] == ["int_rate"] and fired["episode_id"].startswith("champion-")
    episodes = store.read_episodes(live.home / "lake" / "predictions", "crispflow-lending_club")
    assert [e["episode_id"] for e in episodes] == [fired["episode_id"]]


def test_down_stops_everything_it_started(live: Stack) -> None:
    records = live.pid_records()
    assert records
    members = {pid for r in records for pid in group_members(r.pid)}

    result = live.run("down", timeout=120)

    assert result.returncode == 0, result.stderr
    assert not [r.name for r in records if is_alive(r.pid)]
    assert not [pid for pid in members if is_alive(pid)], "a child process outlived `down`"
    assert not list((live.home / "run").glob("*.pid"))
    assert not [port for port in (live.ports.airflow, live.ports.mlflow, live.ports.serve) if port_in_use(port)]
    assert live.run("status").returncode == 1
    assert live.run("down").returncode == 0
