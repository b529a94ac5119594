"""What a stack is made of, as data: one-shot setup steps, long-running processes (argv, environment, health)
and the profile that lists them in start order. Every profile builds these; `control` runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MODEL_SERVER = "model-server"
WORKER_PREFIX = "airflow-worker"  # Celery workers: airflow-worker-1, airflow-worker-2 (prod-local)
S3_SERVER = "s3"  # the moto S3 server (prod-local)


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

    def step(self, name: str) -> SetupStep:
        return next(s for s in self.setup if s.name == name)
