"""The local profile (SQLite, LocalExecutor, local files) and the parts the prod-local profile builds on:
the Airflow environment, the setup steps, the MLflow and model-server processes.

Airflow is never imported: it runs as subprocesses from the venv.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crispflow.settings import Settings
from crispflow.stack.credentials import AIRFLOW_USERS, Secrets, pseudonym_connection
from crispflow.stack.paths import StackPaths
from crispflow.stack.ports import HOST, PORT_ENV, Ports
from crispflow.stack.topology import MODEL_SERVER, ProcessSpec, Profile, SetupStep

LOCAL = "local"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
AIRFLOW_HEALTH_PATH = "/api/v2/monitor/health"
# LocalExecutor whose workers have the task libraries imported before they fork tasks (see its module)
PRELOADING_LOCAL_EXECUTOR = "crispflow_airflow.executors.preloading_local_executor.PreloadingLocalExecutor"


def venv_bin() -> Path:
    """The bin/ of the running interpreter's venv (not resolved: the venv's python is a symlink)."""
    return Path(sys.executable).parent


def airflow_env(settings: Settings, ports: Ports, creds: Secrets) -> dict[str, str]:
    """Variables every Airflow process of the local profile gets (on top of the caller's environment)."""
    paths = StackPaths(settings.home)
    api_url = f"http://{HOST}:{ports.airflow}"
    return {
        "PATH": os.pathsep.join(p for p in (str(venv_bin()), os.environ.get("PATH", "")) if p),
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project_root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.project_root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__CORE__PARALLELISM": "4",
        # a task's supervisor that misses its process's exit by a moment sleeps until the next heartbeat check:
        # up to 5 s idle per task by default; 1 s bounds it (one heartbeat call per running task per second)
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__CORE__EXECUTOR": PRELOADING_LOCAL_EXECUTOR,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{paths.airflow_db.resolve()}",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in AIRFLOW_USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(paths.passwords_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": creds.jwt_secret,
        "AIRFLOW__API__SECRET_KEY": creds.api_secret_key,
        "AIRFLOW__CORE__FERNET_KEY": creds.fernet_key,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(ports.airflow),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(paths.airflow_home / "logs"),
        # task logs private to the stack's user (Airflow chmods them 0o775/0o664 by default, whatever the umask)
        "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS": "0o700",
        "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS": "0o600",
        "CRISPFLOW_HOME": str(settings.home),
        "CRISPFLOW_PROJECT_ROOT": str(settings.project_root),
        "CRISPFLOW_LAKE_URL": settings.lake_url,
        "CRISPFLOW_AIRFLOW_PORT": str(ports.airflow),
        "CRISPFLOW_MLFLOW_PORT": str(ports.mlflow),
        "CRISPFLOW_SERVE_PORT": str(ports.serve),
        "CRISPFLOW_PREDICTIONS_URL": settings.predictions_url,
        "CRISPFLOW_LEDGER_URL": settings.ledger_url,
        # the ledger as the api-server's UI plugin reads it: here the same SQLite file (prod-local and compose: a
        # SELECT-only PostgreSQL role)
        "CRISPFLOW_LEDGER_READ_URL": settings.ledger_url,
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports.mlflow}",
        # the MLflow UI as users open it: the links the UI plugin and the operators' extra links point to
        "CRISPFLOW_MLFLOW_UI_URL": f"http://{HOST}:{ports.mlflow}",
        "GX_ANALYTICS_ENABLED": "false",  # no usage statistics from quality-gate tasks
        # the pseudonym keys: the quality gate's connection, the model server's variable (one user, one machine:
        # prod-local and compose give each to its component only, topology.AIRFLOW_SECRETS)
        "AIRFLOW_CONN_CRISPFLOW_PSEUDONYMS": pseudonym_connection(creds),
        "CRISPFLOW_PSEUDONYM_KEYS": creds.pseudonym_keys,
    } | openlineage_env(paths)


def openlineage_env(paths: StackPaths) -> dict[str, str]:
    """OpenLineage (apache-airflow-providers-openlineage): every DAG run's and task's events, one JSON per line, in
    the stack's home (`lineage/events.jsonl`); a caller's AIRFLOW__OPENLINEAGE__TRANSPORT (e.g. Marquez over HTTP)
    wins. Emission runs in a thread of the task process (not a fork), bounded by the provider's execution_timeout."""
    default = {"type": "file", "log_file_path": str(paths.lineage_events), "append": True}
    return {
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "crispflow",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": os.environ.get("AIRFLOW__OPENLINEAGE__TRANSPORT") or json.dumps(default),
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }


def airflow_setup_steps(airflow: str, env: Mapping[str, str]) -> tuple[SetupStep, ...]:
    """`airflow db migrate`, then `airflow pools set` per pool the DAGs use, in one interpreter
    (`crispflow_airflow.db_setup`; `airflow` names the venv whose Python runs it)."""
    python = str(Path(airflow).with_name("python"))
    return (SetupStep("db-migrate", (python, "-m", "crispflow_airflow.db_setup"), env),)


def serve_spec(ports: Ports, base_env: Mapping[str, str], extra_env: Mapping[str, str] | None = None) -> ProcessSpec:
    """The model server (`crispflow serve`) as a managed process: the PATH, MLflow and crispflow variables
    the Airflow processes get (`base_env`), plus `extra_env` (e.g. S3 credentials for its prediction log).

    It serves every pipeline's registered model (no `--model`: any number of specs, also none registered yet).
    Healthy when `/health` answers 200, which it does before any model is loaded (`/ready` waits for the
    champions).
    """
    env = {k: v for k, v in base_env.items() if k == "PATH" or k.startswith(("CRISPFLOW_", "MLFLOW_"))}
    env |= dict(extra_env or {})
    if "CRISPFLOW_SERVE_TOKENS_FILE" not in env:  # the bearer tokens `up` writes (serving/tokens.py)
        env["CRISPFLOW_SERVE_TOKENS_FILE"] = str(Path(env["CRISPFLOW_HOME"]) / "serve-tokens.json")
    url = f"http://{HOST}:{ports.serve}"
    argv = (
        *(str(venv_bin() / "crispflow"), "serve", "--host", HOST, "--port", str(ports.serve)),
        *("--tracking-uri", env["MLFLOW_TRACKING_URI"], "--predictions-url", env["CRISPFLOW_PREDICTIONS_URL"]),
    )
    return ProcessSpec(
        MODEL_SERVER,
        "Model server",
        argv,
        env,
        port=ports.serve,
        port_env=PORT_ENV["serve"],
        url=url,
        health_url=url + "/health",
    )


def mlflow_spec(ports: Ports, argv: tuple[str, ...], env: Mapping[str, str],
                needs: tuple[str, ...] = ()) -> ProcessSpec:
    """The MLflow tracking server as a managed process (its argv and environment differ per profile)."""
    url = f"http://{HOST}:{ports.mlflow}"
    return ProcessSpec("mlflow", "MLflow tracking server", argv, env, port=ports.mlflow, port_env=PORT_ENV["mlflow"],
                       url=url, health_url=url + "/health", needs=needs)


def build_local_profile(settings: Settings, ports: Ports, creds: Secrets) -> Profile:
    """SQLite + LocalExecutor Airflow, SQLite MLflow with local artifacts: the embedded default.

    Tuned for a small machine: one MLflow worker and no MLflow job runner (7 huey consumers, ~1 GB, used
    by GenAI features only); no Airflow serve-logs processes (task logs are local files the api-server
    reads directly, and serve-logs would bind ports 8793/8794 on all interfaces).
    """
    paths = StackPaths(settings.home)
    bin_dir = venv_bin()
    airflow = str(bin_dir / "airflow")
    env = airflow_env(settings, ports, creds)
    af_url = f"http://{HOST}:{ports.airflow}"
    ml_url = f"http://{HOST}:{ports.mlflow}"
    setup = airflow_setup_steps(airflow, env)

    def af(name: str, label: str, *args: str, key: str, **kw: Any) -> ProcessSpec:
        health = af_url + AIRFLOW_HEALTH_PATH
        argv = (airflow, *args)
        needs = tuple(step.name for step in setup)
        return ProcessSpec(name, label, argv, env, health_url=health, health_key=key, needs=needs, **kw)

    mlflow_argv = (
        *(str(bin_dir / "mlflow"), "server", "--host", HOST, "--port", str(ports.mlflow)),
        *("--backend-store-uri", f"sqlite:///{paths.mlflow_db.resolve()}"),
        *("--artifacts-destination", str(paths.mlflow_artifacts.resolve()), "--workers", "1"),
    )
    mlflow_env = {"PATH": env["PATH"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    processes = (
        # first: MLflow boots while `airflow db migrate` runs
        mlflow_spec(ports, mlflow_argv, mlflow_env),
        af(
            "airflow-api-server",
            "Airflow api-server",
            "api-server",
            "--port",
            str(ports.airflow),
            "--host",
            HOST,
            key="metadatabase",
            port=ports.airflow,
            port_env=PORT_ENV["airflow"],
            url=af_url,
        ),
        af("airflow-scheduler", "Airflow scheduler", "scheduler", "--skip-serve-logs", key="scheduler"),
        af("airflow-dag-processor", "Airflow dag-processor", "dag-processor", key="dag_processor"),
        af("airflow-triggerer", "Airflow triggerer", "triggerer", "--skip-serve-logs", key="triggerer"),
        serve_spec(ports, env),
    )
    return Profile(LOCAL, setup, processes, af_url, ml_url, serve_url=f"http://{HOST}:{ports.serve}")
