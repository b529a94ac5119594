"""What a stack is made of, as data: one-shot setup steps, long-running processes (argv, environment, health)
and the profile that lists them in start order. Every profile builds these; `control` runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crispflow.stack.credentials import MLFLOW_AIRFLOW_USER, MLFLOW_UI_USER

MODEL_SERVER = "model-server"
WORKER_PREFIX = "airflow-worker"  # Celery workers: airflow-worker-1, airflow-worker-2 (prod-local)
S3_SERVER = "s3"  # the moto S3 server (prod-local)

# Airflow 3 task isolation: which Airflow component gets which secret (prod-local and docker-compose.yaml alike;
# tests/unit/test_compose.py checks both against this table). Workers run DAG code and reach Airflow only through
# the Execution API with the short-lived token the scheduler signed for each task: no metadata DB, no Fernet key
# (the api-server decrypts connections and variables for them), no JWT secret. A key not listed goes to every
# component (settings, not secrets).
API_SERVER, SCHEDULER, DAG_PROCESSOR, TRIGGERER = "api-server", "scheduler", "dag-processor", "triggerer"
WORKER = "worker"
CONTROL_PLANE = frozenset({API_SERVER, SCHEDULER, DAG_PROCESSOR, TRIGGERER})
# Each component that talks to MLflow does so as its own MLflow user (prod_setup.MLFLOW_USERS: what each may do):
# the workers train, register and promote; the api-server, where the crispflow UI plugin runs, only reads.
MLFLOW_USER_OF: dict[str, str] = {WORKER: MLFLOW_AIRFLOW_USER, API_SERVER: MLFLOW_UI_USER}
AIRFLOW_SECRETS: dict[str, frozenset[str]] = {
    # the metadata DB and the Fernet key that encrypts connections, variables and trigger arguments in it
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": CONTROL_PLANE,
    "AIRFLOW__CORE__FERNET_KEY": CONTROL_PLANE,
    # signs task tokens (the scheduler's executor) and checks/renews them and UI tokens (the api-server); the
    # dag-processor and triggerer call the Execution API in-process, without tokens
    "AIRFLOW__API_AUTH__JWT_SECRET": frozenset({API_SERVER, SCHEDULER}),
    # the api-server's session/CSRF and log-fetch signing key
    "AIRFLOW__API__SECRET_KEY": frozenset({API_SERVER}),
    # Celery: the scheduler queues tasks and reads their results, the workers take and answer them
    "AIRFLOW__CELERY__BROKER_URL": frozenset({SCHEDULER, WORKER}),
    "AIRFLOW__CELERY__RESULT_BACKEND": frozenset({SCHEDULER, WORKER}),
    # MLflow: the workers' MlflowHook connection; the MLflow client's variables, each component its own user
    # (MLFLOW_USER_OF: the api-server's only reads)
    "AIRFLOW_CONN_MLFLOW_DEFAULT": frozenset({WORKER}),
    "MLFLOW_TRACKING_USERNAME": frozenset(MLFLOW_USER_OF),
    "MLFLOW_TRACKING_PASSWORD": frozenset(MLFLOW_USER_OF),
    # the promotion ledger: task code writes it; the UI plugin reads it through a SELECT-only role
    "CRISPFLOW_LEDGER_URL": frozenset({WORKER}),
    "CRISPFLOW_LEDGER_READ_URL": frozenset({API_SERVER}),
    # Alertmanager's `airflow` login: task code silences an acknowledged drift alert (prod-local)
    "AIRFLOW_CONN_CRISPFLOW_ALERTMANAGER": frozenset({WORKER}),
    # the pseudonym keys: task code stores pseudonyms (the quality gate); the model server pseudonymises requests
    "AIRFLOW_CONN_CRISPFLOW_PSEUDONYMS": frozenset({WORKER}),
    "CRISPFLOW_PSEUDONYM_KEYS": frozenset({MODEL_SERVER}),
}
# the lake's S3 connection (the lake and the prediction store): task code, the triggerer (the drift trigger polls
# the prediction store) and the api-server (the UI plugin's pages: drift windows, reports, Data Docs)
LAKE_CONNECTION_HOLDERS = frozenset({WORKER, TRIGGERER, API_SERVER})
# ... of which these only read: their connection is a read-only user (docker-compose.yaml: MinIO's lake reader;
# prod-local's moto S3 has no access control, so one key serves all)
LAKE_READERS = frozenset({API_SERVER})


def component_env(component: str, env: Mapping[str, str], lake_conn_var: str) -> dict[str, str]:
    """`env` without the secrets AIRFLOW_SECRETS (and the lake connection `lake_conn_var`) keep from `component`."""
    def allowed(key: str) -> bool:
        if key == lake_conn_var:
            return component in LAKE_CONNECTION_HOLDERS
        return component in AIRFLOW_SECRETS.get(key, frozenset({component}))

    return {key: value for key, value in env.items() if allowed(key)}


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
    keeps: str | None = None  # the word its cmdline keeps, if not the program's name (see `marker`)
    health_headers: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)  # e.g. basic auth

    @property
    def marker(self) -> str:
        """A word the process's /proc cmdline keeps (Airflow retitles its api-server, but keeps 'airflow';
        a Celery worker retitles itself '[celeryd: ...]', hence `keeps`)."""
        return self.keeps or Path(self.argv[0]).name


@dataclass(frozen=True)
class Profile:
    """A stack: setup steps and processes in start order; `airflow_url`/`mlflow_url` are the UIs,
    `serve_url` the model server; `mlflow_auth` says how MLflow authenticates (for status output).
    """

    name: str
    setup: tuple[SetupStep, ...]
    processes: tuple[ProcessSpec, ...]
    airflow_url: str
    mlflow_url: str
    serve_url: str | None = None
    mlflow_auth: str = "none (local profile)"
    monitoring: tuple[tuple[str, str], ...] = ()  # (name, URL) of Prometheus and Alertmanager (prod-local)

    def step(self, name: str) -> SetupStep:
        return next(s for s in self.setup if s.name == name)
