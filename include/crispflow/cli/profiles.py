"""Profiles: what a stack is made of, as data (setup steps, processes with their argv, environment and health).

Airflow is never imported: it runs as subprocesses from the venv.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crispflow.cli.credentials import ADMIN_USER, Secrets
from crispflow.cli.errors import StackError
from crispflow.cli.paths import StackPaths
from crispflow.cli.ports import HOST, PORT_ENV, Ports
from crispflow.settings import Settings

DEFAULT_PROFILE = "local"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
AIRFLOW_HEALTH_PATH = "/api/v2/monitor/health"


@dataclass(frozen=True)
class SetupStep:
    """A one-shot command that must succeed before the processes that name it in `needs` start."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ProcessSpec:
    """One long-running process of a profile.

    `health_url` answers 200 when healthy; with `health_key`, the JSON body's `[health_key]["status"]`
    must also be "healthy" (Airflow reports every component on the api-server's endpoint).
    """

    name: str
    label: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    port: int | None = None
    port_env: str | None = None
    url: str | None = None
    health_url: str | None = None
    health_key: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def marker(self) -> str:
        """A word the process's /proc cmdline keeps (Airflow retitles its api-server, but keeps 'airflow')."""
        return Path(self.argv[0]).name


@dataclass(frozen=True)
class Profile:
    """A stack: setup steps and processes in start order; `airflow_url`/`mlflow_url` are the UIs."""

    name: str
    setup: tuple[SetupStep, ...]
    processes: tuple[ProcessSpec, ...]
    airflow_url: str
    mlflow_url: str

    def step(self, name: str) -> SetupStep:
        return next(s for s in self.setup if s.name == name)


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
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{paths.airflow_db.resolve()}",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
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
        "CRISPFLOW_HOME": str(settings.home),
        "CRISPFLOW_PROJECT_ROOT": str(settings.project_root),
        "CRISPFLOW_LAKE_URL": settings.lake_url,
        "CRISPFLOW_AIRFLOW_PORT": str(ports.airflow),
        "CRISPFLOW_MLFLOW_PORT": str(ports.mlflow),
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports.mlflow}",
        "GX_ANALYTICS_ENABLED": "false",  # no usage statistics from quality-gate tasks
    }


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
    migrate = SetupStep("db-migrate", (airflow, "db", "migrate"), env)

    def af(name: str, label: str, *args: str, key: str, **kw: Any) -> ProcessSpec:
        health = af_url + AIRFLOW_HEALTH_PATH
        argv = (airflow, *args)
        return ProcessSpec(name, label, argv, env, health_url=health, health_key=key, needs=(migrate.name,), **kw)

    mlflow_argv = (
        *(str(bin_dir / "mlflow"), "server", "--host", HOST, "--port", str(ports.mlflow)),
        *("--backend-store-uri", f"sqlite:///{paths.mlflow_db.resolve()}"),
        *("--artifacts-destination", str(paths.mlflow_artifacts.resolve()), "--workers", "1"),
    )
    mlflow_env = {"PATH": env["PATH"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    processes = (
        # first: MLflow boots while `airflow db migrate` runs
        ProcessSpec(
            "mlflow",
            "MLflow tracking server",
            mlflow_argv,
            mlflow_env,
            port=ports.mlflow,
            port_env=PORT_ENV["mlflow"],
            url=ml_url,
            health_url=ml_url + "/health",
        ),
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
    )
    return Profile(DEFAULT_PROFILE, (migrate,), processes, af_url, ml_url)


PROFILES: dict[str, Callable[[Settings, Ports, Secrets], Profile]] = {DEFAULT_PROFILE: build_local_profile}


def build_profile(name: str, settings: Settings, ports: Ports, creds: Secrets) -> Profile:
    try:
        builder = PROFILES[name]
    except KeyError:
        raise StackError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    return builder(settings, ports, creds)
