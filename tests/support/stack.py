"""Helpers for tests that run a whole crispflow stack as a user would: the CLI, free ports, a clean environment.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
