"""The prod-local profile: the production topology as processes on this machine, without Docker.

Airflow with the CeleryExecutor (broker: Redis; metadata DB and result backend: PostgreSQL) and two Celery
workers; MLflow on PostgreSQL with basic auth and its artifacts on S3; a moto server on loopback as the S3
endpoint of the lake, the MLflow artifacts and the prediction log; the model server. docker-compose.yaml runs
the same processes as containers (tests/unit/test_compose.py compares them).

State is ephemeral: moto keeps objects in memory, so whenever the S3 server starts, the profile's PostgreSQL
databases and Redis keys are reset too (`prod_setup reset-state`). Their names derive from the home
(`Namespace`), so two homes on one PostgreSQL and Redis never collide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crispflow.settings import Settings
from crispflow.stack.credentials import (
    MLFLOW_ADMIN_USER,
    MLFLOW_AIRFLOW_USER,
    MLFLOW_SERVING_USER,
    MLFLOW_UI_USER,
    MLFLOW_VIEWER_USER,
    Secrets,
)
from crispflow.stack.errors import StackError
from crispflow.stack.local import (
    AIRFLOW_HEALTH_PATH,
    airflow_env,
    airflow_setup_steps,
    mlflow_spec,
    serve_spec,
    venv_bin,
)
from crispflow.stack.monitoring import (
    ADMIN,
    AIRFLOW_USER,
    ALERTMANAGER,
    ALERTMANAGER_CONN_ID,
    MONITORING_STEP,
    PROMETHEUS,
    SECRET_ENV,
    TELEMETRY,
    TIME_SCALE_ENV,
    binary,
    monitoring_dir,
)
from crispflow.stack.paths import StackPaths
from crispflow.stack.ports import HOST, PORT_ENV, Ports
from crispflow.stack.prod_setup import LEDGER_READER_PASSWORD_ENV, MLFLOW_PASSWORD_ENV
from crispflow.stack.topology import (
    API_SERVER,
    MLFLOW_USER_OF,
    MODEL_SERVER,
    S3_SERVER,
    SCHEDULER,
    WORKER,
    WORKER_PREFIX,
    ProcessSpec,
    Profile,
    SetupStep,
    component_env,
)
from crispflow.stack.worker_identity import WORKER_NAME_ENV

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PROD_LOCAL = "prod-local"
POSTGRES_URL_ENV, REDIS_URL_ENV = "CRISPFLOW_POSTGRES_URL", "CRISPFLOW_REDIS_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"  # trust auth, as on CI and dev machines
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LAKE_BUCKET, MLFLOW_BUCKET, PREDICTIONS_BUCKET = "crispflow-lake", "crispflow-mlflow", "crispflow-predictions"
LAKE_CONN_ID = "crispflow_s3"
S3_REGION = "us-east-1"
S3_KEY = "test"  # moto accepts any key: not a secret, and never a real AWS credential
# tasks fork from their worker: what it imports at start (crispflow_airflow.worker_preload) each task has loaded
CELERY_EXTRA_CONFIG = json.dumps({"imports": ["crispflow_airflow.worker_preload"]})
WORKERS_ENV, CONCURRENCY_ENV = "CRISPFLOW_CELERY_WORKERS", "CRISPFLOW_CELERY_WORKER_CONCURRENCY"
WORKERS = 2
WORKER_CONCURRENCY = 2  # 2 workers x 2 task processes on a 2-core machine
HOSTNAME_CALLABLE = "crispflow.stack.worker_identity.hostname"  # `[core] hostname_callable` of the workers
MLFLOW_USERS_STEP = "mlflow-users"
LEDGER_READER_STEP = "ledger-reader"


def _count(var: str, default: int) -> int:
    """A positive worker count from the environment (the scale-out benchmark runs 1 and then 2 workers)."""
    raw = os.environ.get(var, "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise StackError(f"{var}={raw!r}: expected a whole number from 1 to 16")
    return int(raw)


@dataclass(frozen=True)
class Namespace:
    """Names derived from the home: databases, Redis key prefix and Celery queue of one prod-local stack."""

    tag: str  # crispflow_<8 hex of the home's path>

    @classmethod
    def of(cls, home: Path) -> Namespace:
        return cls("crispflow_" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8])

    @property
    def airflow_db(self) -> str:
        return f"{self.tag}_airflow"

    @property
    def mlflow_db(self) -> str:
        return f"{self.tag}_mlflow"

    @property
    def ledger_db(self) -> str:
        return f"{self.tag}_ledger"

    @property
    def ledger_reader(self) -> str:
        """The ledger's read-only role (roles are per server, not per database: hence the home's tag)."""
        return f"{self.tag}_ledger_reader"

    @property
    def databases(self) -> tuple[str, ...]:
        return (self.airflow_db, self.mlflow_db, self.ledger_db)

    @property
    def redis_prefix(self) -> str:
        return f"{self.tag}:"

    @property
    def queue(self) -> str:
        return self.tag


def _server_url(env_name: str, default: str, schemes: tuple[str, ...]) -> URL:
    from sqlalchemy.engine import make_url  # only when this profile is built: `crispflow status` stays light

    raw = os.environ.get(env_name) or default
    try:
        url = make_url(raw)
    except Exception:  # sqlalchemy raises ArgumentError; anything unparsable is the same user error
        raise StackError(f"{env_name}: not a URL") from None
    if url.drivername.split("+")[0] not in schemes or not url.host:
        raise StackError(f"{env_name}: must be {' or '.join(s + '://' for s in schemes)}host[:port]")
    return url


def _pg(base: URL, database: str, driver: str = "postgresql") -> str:
    return base.set(drivername=driver, database=database).render_as_string(hide_password=False)


def ledger_read_url(home: Path, creds: Secrets) -> str:
    """The ledger of the stack in `home` as its read-only role sees it: the api-server's CRISPFLOW_LEDGER_READ_URL
    (the `ledger-reader` step makes the role)."""
    ns = Namespace.of(home)
    base = _server_url(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL, ("postgresql",))
    reader = base.set(username=ns.ledger_reader, password=creds.ledger_reader_password)
    return _pg(reader, ns.ledger_db, "postgresql+psycopg2")


def s3_env(ports: Ports) -> dict[str, str]:
    """What a boto3/s3fs client needs to reach the profile's S3 server (moto: the keys are not secrets)."""
    return {
        "AWS_ENDPOINT_URL": f"http://{HOST}:{ports.s3}",
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
    }


def prod_local_settings(settings: Settings, ns: Namespace, ledger_url: str) -> Settings:
    """The settings every process of the profile shares: lake and prediction log on S3, ledger on PostgreSQL."""
    return dataclasses.replace(
        settings,
        lake_url=f"s3://{LAKE_BUCKET}/lake",
        lake_conn_id=LAKE_CONN_ID,
        predictions_url=f"s3://{PREDICTIONS_BUCKET}/predictions",
        ledger_url=ledger_url,
    )


def client_env(settings: Settings, ports: Ports, creds: Secrets) -> dict[str, str]:
    """Variables a client of a running prod-local stack (the demo, a test, a notebook) needs: the lake and
    prediction log on S3, MLflow with its credentials. Apply them, then `Settings.from_env()`."""
    ns = Namespace.of(settings.home)
    pg = _server_url(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL, ("postgresql",))
    shared = prod_local_settings(settings, ns, _pg(pg, ns.ledger_db, "postgresql+psycopg2"))
    return {
        "CRISPFLOW_LAKE_URL": shared.lake_url,
        "CRISPFLOW_LAKE_CONN_ID": LAKE_CONN_ID,
        "CRISPFLOW_PREDICTIONS_URL": shared.predictions_url,
        "CRISPFLOW_LEDGER_URL": shared.ledger_url,
        f"AIRFLOW_CONN_{LAKE_CONN_ID.upper()}": _s3_connection(ports),
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports.mlflow}",
        "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN_USER,
        "MLFLOW_TRACKING_PASSWORD": creds.mlflow_admin_password,
        **s3_env(ports),
    }


def mlflow_passwords(creds: Secrets) -> dict[str, str]:
    """The per-service MLflow users and their passwords (what each may do: prod_setup.MLFLOW_USERS)."""
    return {
        MLFLOW_AIRFLOW_USER: creds.mlflow_airflow_password,
        MLFLOW_SERVING_USER: creds.mlflow_serving_password,
        MLFLOW_UI_USER: creds.mlflow_ui_password,
        MLFLOW_VIEWER_USER: creds.mlflow_viewer_password,
    }


def component_mlflow_env(component: str, creds: Secrets) -> dict[str, str]:
    """An Airflow component's MLflow login (topology.MLFLOW_USER_OF), none for those that do not use MLflow."""
    user = MLFLOW_USER_OF.get(component)
    if user is None:
        return {}
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": mlflow_passwords(creds)[user]}


def serving_mlflow_env(creds: Secrets) -> dict[str, str]:
    """The model server's MLflow credentials: its read-only user, never the admin."""
    return {"MLFLOW_TRACKING_USERNAME": MLFLOW_SERVING_USER, "MLFLOW_TRACKING_PASSWORD": creds.mlflow_serving_password}


def _s3_connection(ports: Ports) -> str:
    extra = {"endpoint_url": f"http://{HOST}:{ports.s3}", "region_name": S3_REGION}
    return json.dumps({"conn_type": "aws", "login": S3_KEY, "password": S3_KEY, "extra": extra})


def build_prod_local_profile(settings: Settings, ports: Ports, creds: Secrets) -> Profile:
    """The prod-local stack: S3 (moto), MLflow, Airflow api-server/scheduler/dag-processor/triggerer, two Celery
    workers, the model server; setup steps reset state, create buckets, write MLflow's auth config, migrate."""
    ns = Namespace.of(settings.home)
    pg = _server_url(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL, ("postgresql",))
    redis = _server_url(REDIS_URL_ENV, DEFAULT_REDIS_URL, ("redis", "rediss"))
    paths = StackPaths(settings.home)
    bin_dir = venv_bin()
    concurrency = _count(CONCURRENCY_ENV, WORKER_CONCURRENCY)
    shared = prod_local_settings(settings, ns, _pg(pg, ns.ledger_db, "postgresql+psycopg2"))
    s3 = s3_env(ports)
    af_url, ml_url, s3_url = (f"http://{HOST}:{port}" for port in (ports.airflow, ports.mlflow, ports.s3))
    redis_url = redis.render_as_string(hide_password=False)
    airflow_db = _pg(pg, ns.airflow_db, "postgresql+psycopg2")

    env = airflow_env(shared, ports, creds) | {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        # results in Redis, not in the metadata DB: the workers get no database credentials (topology.AIRFLOW_SECRETS);
        # their keys are celery-task-meta-<task uuid>, unique across stacks, and expire after a day
        "AIRFLOW__CELERY__RESULT_BACKEND": redis_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        # as in docker-compose.yaml: more task slots than the workers have keeps a task queued at each one, so a
        # worker that finishes starts the next at once instead of waiting for the executor to notice
        "AIRFLOW__CORE__PARALLELISM": "16",
        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": CELERY_EXTRA_CONFIG,
        # one stack's tasks, queue and keys stay apart from another's on the same Redis
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": ns.queue,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": ns.redis_prefix,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",  # its port 8974 would collide between stacks
        f"AIRFLOW_CONN_{LAKE_CONN_ID.upper()}": _s3_connection(ports),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
            {
                "conn_type": "http",
                "host": HOST,
                "port": ports.mlflow,
                "schema": "http",
                "login": MLFLOW_AIRFLOW_USER,
                "password": creds.mlflow_airflow_password,
            }
        ),
        # (MLFLOW_TRACKING_USERNAME/PASSWORD: per component, `af` below)
        "CRISPFLOW_LAKE_CONN_ID": LAKE_CONN_ID,
        "CRISPFLOW_LEDGER_URL": shared.ledger_url,
        # the api-server's (the UI plugin's) SELECT-only role; component_env keeps it from the others
        "CRISPFLOW_LEDGER_READ_URL": ledger_read_url(settings.home, creds),
        "CRISPFLOW_S3_PORT": str(ports.s3),
        # Airflow's metrics: OTLP/HTTP to the telemetry bridge (Prometheus scrapes it); delta temporality, so the
        # pushes of any number of Airflow processes add up there (stack/monitoring.py)
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://{HOST}:{ports.telemetry}/v1/metrics",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {creds.telemetry_token}",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_SERVICE_NAME": "airflow",
        # the workers silence an acknowledged drift alert in Alertmanager (AcknowledgeAlertOperator)
        f"AIRFLOW_CONN_{ALERTMANAGER_CONN_ID.upper()}": json.dumps(
            {"conn_type": "http", "host": HOST, "port": ports.alertmanager, "schema": "http",
             "login": AIRFLOW_USER, "password": creds.monitoring_airflow_password}
        ),
    }
    python = sys.executable
    setup_env = {
        "PATH": env["PATH"],
        POSTGRES_URL_ENV: pg.render_as_string(hide_password=False),
        REDIS_URL_ENV: redis_url,
        "CRISPFLOW_REDIS_PREFIX": ns.redis_prefix,
        "MLFLOW_AUTH_DATABASE_URI": _pg(pg, ns.mlflow_db),
        **s3,
    }
    module = (python, "-m", "crispflow.stack.prod_setup")
    monitoring_env = {
        "PATH": env["PATH"],
        "CRISPFLOW_PROJECT_ROOT": str(settings.project_root),
        **{PORT_ENV[name]: str(getattr(ports, name)) for name in PORT_ENV},
        SECRET_ENV["admin"]: creds.monitoring_admin_password,
        SECRET_ENV["airflow"]: creds.monitoring_airflow_password,
        SECRET_ENV["telemetry"]: creds.telemetry_token,
        SECRET_ENV["serve_metrics"]: creds.serve_metrics_token,
        **({TIME_SCALE_ENV: os.environ[TIME_SCALE_ENV]} if os.environ.get(TIME_SCALE_ENV) else {}),
    }
    lake_var = f"AIRFLOW_CONN_{LAKE_CONN_ID.upper()}"
    auth_config = paths.home / "mlflow" / "basic_auth.ini"
    users_env = {  # the one place besides the MLflow server that holds MLflow's admin password
        "PATH": env["PATH"],
        "MLFLOW_TRACKING_URI": ml_url,
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds.mlflow_admin_password,
        **{MLFLOW_PASSWORD_ENV[user]: password for user, password in mlflow_passwords(creds).items()},
    }
    setup = (
        SetupStep("reset-state", (*module, "reset-state", *ns.databases), setup_env),
        SetupStep("buckets", (*module, "buckets", LAKE_BUCKET, MLFLOW_BUCKET, PREDICTIONS_BUCKET), setup_env),
        SetupStep("mlflow-auth-config", (*module, "mlflow-auth-config", str(auth_config)), setup_env),
        SetupStep(MLFLOW_USERS_STEP, (*module, MLFLOW_USERS_STEP), users_env),  # runs once MLflow started
        SetupStep(
            LEDGER_READER_STEP,
            (*module, LEDGER_READER_STEP, ns.ledger_db, ns.ledger_reader),
            setup_env | {LEDGER_READER_PASSWORD_ENV: creds.ledger_reader_password},
        ),
        SetupStep(
            MONITORING_STEP,
            (python, "-m", "crispflow.stack.monitoring", "render", str(monitoring_dir(paths.home))),
            monitoring_env,
        ),
        # `airflow db migrate` and the pools: the control plane's environment, without what only tasks or the UI hold
        *airflow_setup_steps(str(bin_dir / "airflow"), component_env(SCHEDULER, env, lake_var)),
    )

    def af(
        name: str,
        label: str,
        *args: str,
        key: str | None,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        keeps: str | None = None,
    ) -> ProcessSpec:
        """An Airflow component; `key`: its entry in the api-server's health report (workers have none). Its
        environment holds only the secrets `topology.AIRFLOW_SECRETS` gives its kind of component, and its own
        MLflow user (topology.MLFLOW_USER_OF)."""
        kind = WORKER if name.startswith(WORKER_PREFIX) else name.removeprefix("airflow-")
        own = env | component_mlflow_env(kind, creds) | (extra_env or {})
        # the workers' MLflow user exists before they run a task; the api-server's role before the UI reads. (Not
        # MLflow's users for the api-server: it would wait for MLflow to start; its UI user exists before `up` ends.)
        needs = {WORKER: (MLFLOW_USERS_STEP,), API_SERVER: (LEDGER_READER_STEP,)}.get(kind, ())
        return ProcessSpec(
            name,
            label,
            (str(bin_dir / "airflow"), *args),
            component_env(kind, own, lake_var),
            port=port,
            port_env=PORT_ENV["airflow"] if port else None,
            url=af_url if port else None,
            health_url=af_url + AIRFLOW_HEALTH_PATH if key else None,
            health_key=key,
            needs=tuple(step.name for step in setup if step.name.startswith(("db-", "pool-"))) + needs,
            keeps=keeps,
        )

    mlflow_argv = (
        *(str(bin_dir / "mlflow"), "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(ports.mlflow)),
        *("--workers", "1", "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"),
    )
    mlflow_env = {
        "PATH": env["PATH"],
        "MLFLOW_BACKEND_STORE_URI": _pg(pg, ns.mlflow_db),  # env, not argv: `ps` would show a password
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds.mlflow_admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds.mlflow_flask_secret,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": s3_url,  # MLflow's own variable for the endpoint, as in docker-compose.yaml
        **{k: v for k, v in s3.items() if k != "AWS_ENDPOINT_URL"},
    }
    workers = tuple(
        af(
            f"{WORKER_PREFIX}-{n}",
            f"Celery worker {n}",
            *("celery", "worker", "--celery-hostname", f"worker{n}@%h", "--queues", ns.queue),
            *("--concurrency", str(concurrency), "--skip-serve-logs"),
            key=None,
            keeps="celery",  # its title becomes "[celeryd: worker1@host:MainProcess] ..."
            extra_env={"AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE, WORKER_NAME_ENV: f"worker{n}"},
        )
        for n in range(1, _count(WORKERS_ENV, WORKERS) + 1)
    )
    processes = (
        ProcessSpec(
            S3_SERVER,
            "S3 (moto)",
            (str(bin_dir / "moto_server"), "-H", HOST, "-p", str(ports.s3)),
            {"PATH": env["PATH"]},
            port=ports.s3,
            port_env=PORT_ENV["s3"],
            url=s3_url,
            health_url=s3_url + "/moto-api/",
            needs=("reset-state",),
        ),
        mlflow_spec(ports, mlflow_argv, mlflow_env, needs=("buckets", "mlflow-auth-config")),
        af(
            "airflow-api-server",
            "Airflow api-server",
            *("api-server", "--port", str(ports.airflow), "--host", HOST),
            key="metadatabase",
            port=ports.airflow,
        ),
        af("airflow-scheduler", "Airflow scheduler", "scheduler", "--skip-serve-logs", key="scheduler"),
        af("airflow-dag-processor", "Airflow dag-processor", "dag-processor", key="dag_processor"),
        af("airflow-triggerer", "Airflow triggerer", "triggerer", "--skip-serve-logs", key="triggerer"),
        *workers,
        # the model server reads the registry as its own read-only MLflow user
        dataclasses.replace(
            serve_spec(ports, component_env(MODEL_SERVER, env, lake_var), s3 | serving_mlflow_env(creds)),
            needs=("buckets", MLFLOW_USERS_STEP),
        ),
        *monitoring_processes(paths, ports, creds, env["PATH"]),
    )
    mlflow_auth = (
        f"basic auth: user {MLFLOW_ADMIN_USER} (or read-only {MLFLOW_VIEWER_USER}), passwords in {paths.secrets_file}"
    )
    monitoring = ((PROMETHEUS, f"http://{HOST}:{ports.prometheus}"), (ALERTMANAGER, f"http://{HOST}:{ports.alertmanager}"))
    return Profile(PROD_LOCAL, setup, processes, af_url, ml_url, f"http://{HOST}:{ports.serve}", mlflow_auth,
                   monitoring)


def monitoring_processes(paths: StackPaths, ports: Ports, creds: Secrets, path_var: str) -> tuple[ProcessSpec, ...]:
    """The telemetry bridge, Prometheus and Alertmanager (stack/monitoring.py), configured by MONITORING_STEP."""
    import base64

    folder = monitoring_dir(paths.home)
    login = base64.b64encode(f"{ADMIN}:{creds.monitoring_admin_password}".encode()).decode()
    basic = {"Authorization": f"Basic {login}"}
    tel_url = f"http://{HOST}:{ports.telemetry}"
    telemetry = ProcessSpec(
        TELEMETRY,
        "Telemetry bridge (Airflow OTLP metrics, alert inbox)",
        (sys.executable, "-m", "crispflow.monitoring.telemetry_server", "--host", HOST, "--port", str(ports.telemetry),
         "--inbox", str(folder / "notifications.jsonl")),
        {"PATH": path_var, SECRET_ENV["telemetry"]: creds.telemetry_token},
        port=ports.telemetry,
        port_env=PORT_ENV["telemetry"],
        url=tel_url,
        health_url=tel_url + "/health",
        needs=(MONITORING_STEP,),
        keeps="telemetry_server",
    )
    def web(name: str, label: str, port: int, *args: str) -> ProcessSpec:
        """Prometheus or Alertmanager: its config, the shared web config (basic auth), its data, on loopback."""
        url = f"http://{HOST}:{port}"
        argv = (binary(name), f"--config.file={folder / (name + '.yml')}", f"--web.config.file={folder / 'web.yml'}",
                f"--web.listen-address={HOST}:{port}", f"--web.external-url={url}", *args)
        return ProcessSpec(name, label, argv, {"PATH": path_var}, port=port, port_env=PORT_ENV[name], url=url,
                           health_url=url + "/-/ready", health_headers=basic, needs=(MONITORING_STEP,))

    prometheus = web(PROMETHEUS, "Prometheus", ports.prometheus,
                     f"--storage.tsdb.path={folder / 'prometheus-data'}", "--storage.tsdb.retention.time=7d")
    alertmanager = web(ALERTMANAGER, "Alertmanager", ports.alertmanager,
                       f"--storage.path={folder / 'alertmanager-data'}", "--cluster.listen-address=")  # no gossip
    return (telemetry, alertmanager, prometheus)
