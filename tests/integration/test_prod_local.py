"""The prod-local profile end to end: `crispflow up --profile prod-local` → the demo through the REST API → `down`.

The three shipped pipelines (binary, regression, multiclass) run the whole demo story at the same time on this one
stack: ingest → gate → train → bless → serve → canary → drift → retrain, each on its own model, routes and stores.

The production topology as processes (include/crispflow/stack/prod_local.py): Airflow with the CeleryExecutor on
the local PostgreSQL and Redis, two Celery workers, MLflow on PostgreSQL with basic auth and artifacts on S3,
a moto S3 server for the lake, the artifacts and the prediction log, and the model server. One stack for the
module, in a temporary home on free ports; `down` always runs at teardown. Skipped (with the reason) only when
PostgreSQL or Redis does not answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from support.permissions import loose_entries
from support.stack import Stack, clean_env, free_ports

from crispflow.settings import Settings
from crispflow.stack.credentials import MLFLOW_AIRFLOW_USER, MLFLOW_SERVING_USER, MLFLOW_UI_USER, MLFLOW_VIEWER_USER
from crispflow.stack.ports import Ports, port_in_use
from crispflow.stack.processes import group_members, is_alive
from crispflow.stack.prod_local import LAKE_BUCKET, Namespace, client_env, ledger_read_url, prod_local_settings

# the whole demo (two trainings and a canary phase) on 2 shared cores takes longer than the default 900 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
LINEAR = {"lending_club": "logreg", "lending_club_rate": "ridge", "lending_club_verification": "logreg"}
PROCESSES = {
    "s3",
    "mlflow",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-1",
    "airflow-worker-2",
    "model-server",
}


def _unreachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return False
    return True


class ProdStack(Stack):
    """The prod-local stack, seen by a client: its environment and settings."""

    def client_env(self) -> dict[str, str]:
        return client_env(self.settings(), self.ports, self.secrets)

    def settings(self) -> Settings:
        base = Settings.from_env()
        base = replace(base, home=self.home, mlflow_tracking_uri=f"http://127.0.0.1:{self.ports.mlflow}",
                       serve_port=self.ports.serve)
        ns = Namespace.of(self.home)
        return prod_local_settings(base, ns, f"postgresql+psycopg2://postgres@127.0.0.1:5432/{ns.ledger_db}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProdStack]:
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        if _unreachable("127.0.0.1", port):
            pytest.skip(f"{name} is not reachable on 127.0.0.1:{port}; the prod-local profile needs it")
    base = tmp_path_factory.mktemp("prod")
    pipelines = base / "pipelines"  # the shipped specs with one linear candidate each: the same story, minutes less
    pipelines.mkdir()
    for name, linear in LINEAR.items():
        spec = yaml.safe_load((ROOT / "include" / "pipelines" / f"{name}.yaml").read_text())
        spec["training"]["candidates"] = [c for c in spec["training"]["candidates"] if c["name"] == linear]
        spec["training"]["search_budget"] = 2
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    airflow, mlflow, serve, s3 = free_ports(4)
    ports = Ports(airflow=airflow, mlflow=mlflow, serve=serve, s3=s3)
    env = clean_env() | {
        "CRISPFLOW_HOME": str(base / "home"),
        "CRISPFLOW_PROJECT_ROOT": str(ROOT),
        "CRISPFLOW_AIRFLOW_PORT": str(airflow),
        "CRISPFLOW_MLFLOW_PORT": str(mlflow),
        "CRISPFLOW_SERVE_PORT": str(serve),
        "CRISPFLOW_S3_PORT": str(s3),
        "CRISPFLOW_PIPELINES_DIR": str(pipelines),
    }
    live = ProdStack(base / "home", env, ports)
    started = time.monotonic()
    result = live.run("up", "--profile", "prod-local", "--timeout", "300", timeout=500)
    try:
        assert result.returncode == 0, f"crispflow up --profile prod-local failed:\n{result.stdout}\n{result.stderr}"
        print(f"\nprod-local became healthy in {time.monotonic() - started:.0f} s")
        yield live
    finally:
        live.run("down", timeout=180)


@pytest.fixture(scope="module")
def demos(live: ProdStack) -> Iterator[dict[str, dict[str, Any]]]:
    """The demo scenario (ingest through the gate, asset-triggered training, drift loop, canary) for the three
    pipelines at once, as three clients of the stack would run it."""
    from concurrent.futures import ThreadPoolExecutor

    from crispflow.stack.demo import run_demo

    with pytest.MonkeyPatch.context() as mp:
        for key, value in live.client_env().items():
            mp.setenv(key, value)
        mp.setenv("CRISPFLOW_PIPELINES_DIR", live.env["CRISPFLOW_PIPELINES_DIR"])
        api, settings = live.api(), live.settings()
        with ThreadPoolExecutor(len(LINEAR)) as pool:
            futures = {name: pool.submit(run_demo, api, settings, name) for name in LINEAR}
            yield {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def demo(demos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return demos["lending_club"]


def test_every_process_of_the_topology_is_healthy(live: ProdStack) -> None:
    status = live.status()
    assert status["healthy"] is True, status
    assert status["profile"] == "prod-local"
    assert {p["name"] for p in status["processes"]} == PROCESSES
    assert status["serve_url"] == f"http://127.0.0.1:{live.ports.serve}"
    assert status["paths"]["lake"] == f"s3://{LAKE_BUCKET}/lake"
    assert "basic auth" in status["mlflow_auth"]
    assert status["ui_pages"]["models"] == f"http://127.0.0.1:{live.ports.airflow}/crispflow/models"
    assert live.secrets.mlflow_admin_password not in json.dumps(status), "status must not print MLflow's password"
    assert requests.get(f"{status['serve_url']}/health", timeout=5).status_code == 200
    assert requests.get(f"{status['serve_url']}/models", timeout=5).status_code == 401  # the model server's tokens


def test_mlflow_requires_authentication(live: ProdStack) -> None:
    url = f"http://127.0.0.1:{live.ports.mlflow}/api/2.0/mlflow/experiments/search"
    assert requests.post(url, json={"max_results": 1}, timeout=10).status_code == 401
    auth = ("admin", live.secrets.mlflow_admin_password)
    assert requests.post(url, json={"max_results": 1}, auth=auth, timeout=10).status_code == 200


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_each_process_holds_only_its_own_credentials(live: ProdStack) -> None:
    """Read from the running processes: workers have no metadata DB, Fernet key or JWT secret and run as MLflow's
    crispflow-airflow; the model server as crispflow-serving; no process holds the ledger's read-only role but the
    api-server; only the MLflow server knows the admin password. (The api-server's own environment cannot be read
    here: Airflow retitles it with setproctitle, which blanks /proc/<pid>/environ. What it reads with is checked by
    what its users may do: test_the_model_servers_mlflow_user..., test_the_api_servers_ledger_role...)"""
    creds = live.secrets
    envs = {record.name: _environ(record.pid) for record in live.pid_records()}
    control = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET")
    for name in ("airflow-worker-1", "airflow-worker-2"):
        assert not [key for key in (*control, "AIRFLOW__API__SECRET_KEY") if key in envs[name]], name
        assert not [v for v in envs[name].values() if creds.fernet_key in v or creds.jwt_secret in v], name
        assert envs[name]["MLFLOW_TRACKING_USERNAME"] == MLFLOW_AIRFLOW_USER
    assert all(key in envs["airflow-scheduler"] for key in control)
    assert envs["model-server"]["MLFLOW_TRACKING_USERNAME"] == MLFLOW_SERVING_USER
    holders = {name for name, env in envs.items() if creds.mlflow_admin_password in " ".join(env.values())}
    assert holders == {"mlflow"}, f"MLflow's admin password reaches {sorted(holders - {'mlflow'})}"
    readers = {name for name, env in envs.items() if creds.ledger_reader_password in " ".join(env.values())}
    readers |= {name for name, env in envs.items() if "CRISPFLOW_LEDGER_READ_URL" in env}
    assert readers <= {"airflow-api-server"}, f"the ledger's read-only role reaches {sorted(readers)}"
    # `up` made that role (the `ledger-reader` step): it logs in to the ledger database, read-only by default
    import sqlalchemy

    engine = sqlalchemy.create_engine(ledger_read_url(live.home, creds))
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text("SELECT current_user, current_database(), "
                                               "current_setting('default_transaction_read_only')")).one()
    finally:
        engine.dispose()
    ns = Namespace.of(live.home)
    assert tuple(row) == (ns.ledger_reader, ns.ledger_db, "on")


def test_the_model_servers_mlflow_user_cannot_move_an_alias(live: ProdStack, demo: dict[str, Any]) -> None:
    creds, url = live.secrets, f"http://127.0.0.1:{live.ports.mlflow}/api/2.0/mlflow/registered-models/alias"
    version = demo["model"].split()[1].removeprefix("v")
    body = {"name": "crispflow-lending_club", "alias": "least-privilege-probe", "version": version}
    read = f"http://127.0.0.1:{live.ports.mlflow}/api/2.0/mlflow/registered-models/get"
    for user, password in ((MLFLOW_SERVING_USER, creds.mlflow_serving_password),
                           (MLFLOW_UI_USER, creds.mlflow_ui_password),  # the api-server's (the UI plugin's)
                           (MLFLOW_VIEWER_USER, creds.mlflow_viewer_password)):
        got = requests.get(read, params={"name": body["name"]}, auth=(user, password), timeout=10)
        assert got.status_code == 200, user
        assert requests.post(url, json=body, auth=(user, password), timeout=10).status_code == 403, user
    # the workers' user may (it promoted the champion during the demo); the probe alias is removed again
    airflow = (MLFLOW_AIRFLOW_USER, creds.mlflow_airflow_password)
    assert requests.post(url, json=body, auth=airflow, timeout=10).status_code == 200
    unset = {"name": body["name"], "alias": body["alias"]}
    assert requests.delete(url, json=unset, auth=airflow, timeout=10).status_code == 200


def test_the_api_servers_ledger_role_reads_the_demos_entries_and_cannot_write(
        live: ProdStack, demo: dict[str, Any]) -> None:
    import sqlalchemy
    from sqlalchemy.exc import DBAPIError

    from crispflow.release.promotion import Ledger

    url = ledger_read_url(live.home, live.secrets)  # the api-server's, for the role the `ledger-reader` step made
    actions = [entry["action"] for entry in Ledger(url).entries("crispflow-lending_club")]
    assert actions == [line.split()[1] for line in demo["drift loop"]["promotion ledger"]]
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError, match="permission denied"):
            conn.execute(sqlalchemy.text("SET TRANSACTION READ WRITE"))
            conn.execute(sqlalchemy.text("UPDATE promotion_ledger SET reason = 'forged'"))
    finally:
        engine.dispose()


def test_the_ui_plugin_reads_mlflow_the_ledger_and_s3_with_the_api_servers_own_access(
        live: ProdStack, demo: dict[str, Any]) -> None:
    """The crispflow pages on the production topology: the api-server reads the registry as `crispflow-ui`, the
    ledger through its SELECT-only role and the drift store in S3 through its read-only connection."""
    from crispflow.release.promotion import Ledger

    name = "crispflow-lending_club"
    token = live.api().token()
    get = lambda path: requests.get(f"http://127.0.0.1:{live.ports.airflow}/crispflow/api/{path}",  # noqa: E731
                                    headers={"Authorization": f"Bearer {token}"}, timeout=60)
    promotions = get(f"promotions/{name}").json()
    ledger = Ledger(ledger_read_url(live.home, live.secrets), read_only=True).entries(name)
    assert [e["seq"] for e in promotions["entries"]] == [e["seq"] for e in reversed(ledger)]
    assert promotions["divergences"] == [] and promotions["aliases"]["champion"] == ledger[-1]["moves"]["champion"][1]
    champion = promotions["aliases"]["champion"]
    version = get(f"models/{name}/versions/{champion}").json()
    assert version["verdict"]["blessed"] is True and version["problems"] == [], version["problems"]
    dataset = version["lineage"]["dataset"]
    assert dataset["dataset_version_id"].startswith("ds-") and dataset["manifest"], dataset  # the manifest, from S3
    drift = get(f"drift/{name}").json()
    assert any(w["drift"] for w in drift["aliases"]["champion"]) and drift["episodes"] and drift["alerts"]


def test_the_home_is_private(live: ProdStack, demo: dict[str, Any]) -> None:
    """After the demo: secrets, MLflow's auth config, Airflow's home and task logs, process logs, PID files —
    0700 folders and 0600 files only."""
    assert list((live.home / "airflow" / "logs").rglob("*.log")), "no task log was written"
    assert loose_entries(live.home) == []


def test_demo_runs_with_tasks_on_both_workers(live: ProdStack, demo: dict[str, Any]) -> None:
    assert demo["blessed"].startswith("True"), demo
    api = live.api()
    run_id = demo["training run"].rsplit("/", 1)[1]
    tasks = api.task_instances("train_evaluate_register", run_id)
    hosts = {t["hostname"] for t in tasks if t["state"] == "success"}
    # both Celery workers ran tasks of the run (which worker takes which mapped candidate depends on the load)
    assert {h.split(".", 1)[0] for h in hosts} == {"worker1", "worker2"}, f"task hosts: {sorted(hosts)}"


def test_the_drift_loop_completes_on_the_production_topology(demo: dict[str, Any]) -> None:
    """Later months as traffic → drift → sensor → retrain → blessed → canary → promoted, all on Celery/PG/S3."""
    loop = demo["drift loop"]
    assert any(": drift " in w for w in loop["windows"]), loop["windows"]
    assert loop["canary decision"].startswith("promote"), loop
    assert [line.split()[1] for line in loop["promotion ledger"]] == ["cold_start", "deploy_canary", "promote"]


@pytest.mark.parametrize("pipeline", ["lending_club_rate", "lending_club_verification"])
def test_regression_and_multiclass_pipelines_complete_the_loop_beside_the_demo(
        live: ProdStack, demos: dict[str, dict[str, Any]], pipeline: str) -> None:
    """Each pipeline: its first model blessed against no skill and champion; drift found on its own traffic; its
    own sensor episode and retraining; the retrained model deployed as canary and judged on its own labels."""
    from crispflow.model import registry

    summary = demos[pipeline]
    name = registry.model_name(pipeline)
    assert summary["blessed"].startswith("True (cold_start)"), summary
    loop = summary["drift loop"]
    assert any(": drift " in w for w in loop["windows"]), loop["windows"]
    assert f"/models/{name}" in loop["model server"], loop
    assert loop["canary decision"].split(":")[0] in ("promote", "rollback", "continue"), loop
    actions = [line.split()[1] for line in loop["promotion ledger"]]
    assert actions[:2] == ["cold_start", "deploy_canary"], actions
    admin = {"Authorization": f"Bearer {live.secrets.serve_admin_token}"}
    report = json.loads(requests.get(f"{live.status()['serve_url']}/models/{name}", timeout=10, headers=admin).text)
    assert report["model"] == name and "champion" in report["aliases"], report
    others = {registry.model_name(p) for p in LINEAR} - {name}
    assert not any(other in " ".join(loop["windows"]) for other in others), "windows of two pipelines mixed"


def test_lake_objects_are_in_s3(live: ProdStack, demo: dict[str, Any]) -> None:
    import boto3

    version_id = demo["dataset version"].split()[0]
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{live.ports.s3}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    listing = s3.list_objects_v2(Bucket=LAKE_BUCKET, Prefix=f"lake/curated/lending_club/{version_id}/")
    keys = {obj["Key"].rsplit("/", 1)[1] for obj in listing.get("Contents", [])}
    assert {"data.parquet", "manifest.json"} <= keys, keys
    manifest = json.loads(
        s3.get_object(Bucket=LAKE_BUCKET, Key=f"lake/curated/lending_club/{version_id}/manifest.json")["Body"].read()
    )
    assert manifest["dataset_version_id"] == version_id
    artifacts = s3.list_objects_v2(Bucket="crispflow-mlflow", Prefix="artifacts/")
    assert artifacts.get("KeyCount", 0) > 0, "MLflow's artifacts are not on S3"


def test_mlflow_backend_is_postgresql(live: ProdStack, demo: dict[str, Any]) -> None:
    import psycopg2

    version = demo["model"].split()[1].removeprefix("v")
    db = Namespace.of(live.home).mlflow_db
    name = ("crispflow-lending_club",)
    with (
        contextlib.closing(psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db)) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT version FROM model_versions WHERE name = %s", name)
        versions = {str(row[0]) for row in cur.fetchall()}
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", name)
        aliases = {alias: str(v) for alias, v in cur.fetchall()}
    assert version in versions, f"v{version} is not in MLflow's PostgreSQL database {db}"
    assert aliases.get("champion") in versions, aliases


def test_model_server_serves_the_champion(live: ProdStack, demo: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{live.ports.serve}/ready"
    deadline = time.monotonic() + 90
    while (code := requests.get(url, timeout=10).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(2)
    assert code == 200, "the model server did not load the champion from the S3-backed registry"


def test_down_stops_everything_it_started(live: ProdStack) -> None:
    records = live.pid_records()
    assert {r.name for r in records} == PROCESSES
    members = {pid for r in records for pid in group_members(r.pid)}

    result = live.run("down", timeout=180)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first_server = min(i for i, line in enumerate(lines) if line.startswith(("mlflow", "airflow-api-server")))
    assert all(i < first_server for i, line in enumerate(lines) if line.startswith("airflow-worker")), lines
    assert lines[-1].startswith("s3:"), "storage stops last"
    assert not [r.name for r in records if is_alive(r.pid)]
    assert not [pid for pid in members if is_alive(pid)], "a child process outlived `down`"
    assert not list((live.home / "run").glob("*.pid"))
    assert not [port for port in asdict(live.ports).values() if port_in_use(port)]
    assert live.run("status").returncode == 1
