"""The stack's TCP ports: the defaults, the CRISPFLOW_*_PORT variables, what `up` recorded, and which are taken."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from crispflow.stack.errors import StackError
from crispflow.stack.paths import StackPaths

HOST = "127.0.0.1"
PORT_ENV = {
    "airflow": "CRISPFLOW_AIRFLOW_PORT",
    "mlflow": "CRISPFLOW_MLFLOW_PORT",
    "serve": "CRISPFLOW_SERVE_PORT",
    "s3": "CRISPFLOW_S3_PORT",
    "prometheus": "CRISPFLOW_PROMETHEUS_PORT",
    "alertmanager": "CRISPFLOW_ALERTMANAGER_PORT",
    "telemetry": "CRISPFLOW_TELEMETRY_PORT",
}


@dataclass(frozen=True)
class Ports:
    """TCP ports of the stack's servers (all bound to 127.0.0.1)."""

    airflow: int = 8080
    mlflow: int = 5000
    serve: int = 8000  # the model server (crispflow serve)
    s3: int = 9000  # the S3 endpoint (moto) of the prod-local profile; unused by the local profile
    prometheus: int = 9090  # prod-local's Prometheus, Alertmanager and OTLP bridge (stack/monitoring.py)
    alertmanager: int = 9093
    telemetry: int = 9464

    def __str__(self) -> str:
        return ", ".join(f"{name} port {port}" for name, port in asdict(self).items())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base: Ports | None = None) -> Ports:
        """`base` (default: the defaults) overridden by each CRISPFLOW_*_PORT variable that is set."""
        environ = os.environ if environ is None else environ
        values = asdict(base or cls())
        for key, var in PORT_ENV.items():
            if raw := environ.get(var):
                values[key] = _parse_port(var, raw)
        return cls(**values)


def _parse_port(var: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{var}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{var}={port} is out of range (1-65535)")
    return port


@dataclass(frozen=True)
class StackState:
    """What `up` recorded about the running stack: which profile, on which ports."""

    profile: str
    ports: Ports

    @classmethod
    def load(cls, paths: StackPaths) -> StackState | None:
        try:
            data = json.loads(paths.stack_file.read_text())
            return cls(str(data["profile"]), Ports(**data["ports"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save(self, paths: StackPaths) -> None:
        paths.stack_file.write_text(json.dumps(asdict(self)) + "\n")


def resolve_ports(home: Path, environ: Mapping[str, str] | None = None) -> Ports:
    """The ports `up` recorded (if it did), overridden by CRISPFLOW_*_PORT variables that are set."""
    state = StackState.load(StackPaths(home))
    return Ports.from_env(environ, base=state.ports if state else None)


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something listens on host:port (a bind fails, or a connect succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            sock.bind((host, port))
        except OSError:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
