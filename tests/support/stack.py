"""Helpers for tests that run a whole crispflow stack as a user would: the CLI, free ports, a clean environment.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crispflow.stack.airflow_api import AirflowAPI
from crispflow.stack.credentials import Secrets, load_secrets
from crispflow.stack.paths import StackPaths
from crispflow.stack.ports import Ports
from crispflow.stack.processes import PidRecord, read_pid_records

ROOT = Path(__file__).resolve().parents[2]
RESERVED_PORTS = {8080, 5000, 8000, 9000}  # the defaults a developer's own stack uses: never taken by a test


def cli() -> str:
    """The venv's `crispflow` command."""
    beside = Path(sys.executable).parent / "crispflow"
    return str(beside if beside.exists() else ROOT / ".venv" / "bin" / "crispflow")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, none of RESERVED_PORTS."""
    socks, ports = [], []
    while len(ports) < count:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        if (port := sock.getsockname()[1]) not in RESERVED_PORTS:
            ports.append(port)
    for sock in socks:
        sock.close()
    return ports


def clean_env() -> dict[str, str]:
    """The caller's environment without Airflow/crispflow/MLflow/AWS settings (each test configures its own)."""
    prefixes = ("AIRFLOW", "CRISPFLOW_", "MLFLOW_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@dataclass
class Stack:
    """A stack a test started with the CLI: its home, environment and ports."""

    home: Path
    env: dict[str, str]
    ports: Ports

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli(), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "--json").stdout)

    @property
    def secrets(self) -> Secrets:
        creds = load_secrets(self.home)
        assert creds is not None
        return creds

    def api(self) -> AirflowAPI:
        return AirflowAPI(f"http://127.0.0.1:{self.ports.airflow}", "admin", self.secrets.admin_password)

    def pid_records(self) -> list[PidRecord]:
        return read_pid_records(StackPaths(self.home))


@contextmanager
def started_stack(base: Path, *, project_root: Path = ROOT, pipelines: Path | None = None,
                  timeout: float = 400) -> Iterator[Stack]:
    """`crispflow up` of a local stack in `<base>/home` on free ports (the project's DAGs, or `project_root`'s;
    the shipped specs, or `pipelines`), yielded healthy and stopped with `down` afterwards."""
    airflow_port, mlflow_port, serve_port = free_ports(3)
    env = clean_env() | {
        "CRISPFLOW_HOME": str(base / "home"),
        "CRISPFLOW_PROJECT_ROOT": str(project_root),
        "CRISPFLOW_AIRFLOW_PORT": str(airflow_port),
        "CRISPFLOW_MLFLOW_PORT": str(mlflow_port),
        "CRISPFLOW_SERVE_PORT": str(serve_port),
    } | ({"CRISPFLOW_PIPELINES_DIR": str(pipelines)} if pipelines else {})
    live = Stack(base / "home", env, Ports(airflow=airflow_port, mlflow=mlflow_port, serve=serve_port))
    result = live.run("up", timeout=timeout)
    try:
        assert result.returncode == 0, f"crispflow up failed:\n{result.stdout}\n{result.stderr}"
        yield live
    finally:
        live.run("down", timeout=120)


def wait_for(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        if found := check():
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)
