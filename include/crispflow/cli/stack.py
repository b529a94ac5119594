"""The local stack: a process table per profile, started and stopped by PID, never by name.

A profile is data: one-shot setup steps (`airflow db migrate`), long-running processes (each with its argv,
environment, port and health check) and the Airflow pools to ensure once the api-server answers. `up` starts
what is not running yet and waits until everything is healthy; `down` signals only the process groups it
started, after checking each PID still belongs to the command it launched (start time and command line from
/proc). Airflow is never imported: it runs as subprocesses from the venv.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from crispflow.errors import CrispflowError
from crispflow.settings import Settings

HOST = "127.0.0.1"
ADMIN_USER = "admin"
DEFAULT_PROFILE = "local"
PORT_ENV = {"airflow": "CRISPFLOW_AIRFLOW_PORT", "mlflow": "CRISPFLOW_MLFLOW_PORT"}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
AIRFLOW_HEALTH_PATH = "/api/v2/monitor/health"
POOLS: dict[str, dict[str, Any]] = {
    "crispflow_publish": {"slots": 1, "description": "serialises dataset publication"},
    "crispflow_promotion": {"slots": 1, "description": "serialises registry alias moves"},
}
STOP_TIMEOUT = 20.0
UP_TIMEOUT = 180.0
HEALTH_TIMEOUT = 10.0  # on SQLite the api-server can stall for seconds behind a locked write


class StackError(CrispflowError):
    """The stack cannot be started, inspected or stopped; the message says what to do."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Ports:
    """TCP ports of the stack's servers (all bound to 127.0.0.1)."""

    airflow: int = 8080
    mlflow: int = 5000

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
class Secrets:
    """Generated once per home, stored in `<home>/secrets.json` (mode 0600)."""

    admin_password: str
    jwt_secret: str
    api_secret_key: str
    fernet_key: str

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            admin_password=secrets.token_urlsafe(16),
            jwt_secret=secrets.token_urlsafe(64),  # PyJWT warns below 64 bytes for the HS512 Airflow uses
            api_secret_key=secrets.token_urlsafe(32),
            fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        )

    @classmethod
    def unset(cls) -> Secrets:
        """Placeholders, for read-only views of a profile (status) when none were generated yet."""
        return cls("", "", "", "")


@dataclass(frozen=True)
class StackPaths:
    """Where the local stack keeps its state, all under `settings.home`."""

    home: Path

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def airflow_db(self) -> Path:
        return self.airflow_home / "airflow.db"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.json"

    @property
    def stack_file(self) -> Path:
        """Profile and ports of the running stack, written by `up`, removed by `down`."""
        return self.run / "stack.json"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        for path in (self.airflow_home, self.mlflow_artifacts, self.lake, self.logs, self.run):
            path.mkdir(parents=True, exist_ok=True)


def load_secrets(home: Path) -> Secrets | None:
    """The stack's secrets, or None if `up` never ran in this home."""
    path = StackPaths(home).secrets_file
    try:
        data = json.loads(path.read_text())
        return Secrets(**{f.name: data[f.name] for f in fields(Secrets)})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is unreadable ({exc}); delete it to generate new secrets") from None


def load_or_create_secrets(home: Path) -> Secrets:
    """Read `<home>/secrets.json`, creating it (0600, exclusively) on first use."""
    path = StackPaths(home).secrets_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if (found := load_secrets(home)) is not None:
        path.chmod(0o600)
        return found
    new = Secrets.generate()
    try:
        _write_private(path, json.dumps(asdict(new), indent=2) + "\n", exclusive=True)
    except FileExistsError:  # another `up` won the race: use its secrets
        return load_or_create_secrets(home)
    return new


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write a file readable by its owner only (0600 from creation, no window with wider access)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def write_passwords_file(paths: StackPaths, creds: Secrets) -> None:
    """SimpleAuthManager's password file: JSON `{"user": "password"}`; Airflow adds only missing users."""
    _write_private(paths.passwords_file, json.dumps({ADMIN_USER: creds.admin_password}) + "\n")


def venv_bin() -> Path:
    """The bin/ of the running interpreter's venv (not resolved: the venv's python is a symlink)."""
    return Path(sys.executable).parent


def _path_with_venv(environ: Mapping[str, str]) -> str:
    return os.pathsep.join(p for p in (str(venv_bin()), environ.get("PATH", "")) if p)


def airflow_env(settings: Settings, ports: Ports, creds: Secrets | None = None) -> dict[str, str]:
    """Variables every Airflow process of the local profile gets (on top of the caller's environment)."""
    paths = StackPaths(settings.home)
    creds = creds or load_or_create_secrets(settings.home)
    api_url = f"http://{HOST}:{ports.airflow}"
    return {
        "PATH": _path_with_venv(os.environ),
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


# --------------------------------------------------------------------------- profiles


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
    """A stack: setup steps, processes in start order, and the Airflow pools to ensure once it is healthy.

    `airflow_url`/`mlflow_url` are the UIs.
    """

    name: str
    setup: tuple[SetupStep, ...]
    processes: tuple[ProcessSpec, ...]
    airflow_url: str
    mlflow_url: str
    pools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)

    def step(self, name: str) -> SetupStep:
        return next(s for s in self.setup if s.name == name)


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
    return Profile(DEFAULT_PROFILE, (migrate,), processes, af_url, ml_url, POOLS)


PROFILES: dict[str, Callable[[Settings, Ports, Secrets], Profile]] = {"local": build_local_profile}


def build_profile(name: str, settings: Settings, ports: Ports, creds: Secrets) -> Profile:
    try:
        builder = PROFILES[name]
    except KeyError:
        raise StackError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    return builder(settings, ports, creds)


# --------------------------------------------------------------------------- processes and PID files


@dataclass(frozen=True)
class PidRecord:
    """What `up` wrote about a process it started: enough to recognise it again, and nothing else."""

    name: str
    pid: int
    start_time: int  # clock ticks since boot, /proc/<pid>/stat field 22: survives exec, defeats PID reuse
    marker: str  # a word its cmdline must contain
    argv: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "argv": list(self.argv)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        data = json.loads(text)
        return cls(
            str(data["name"]),
            int(data["pid"]),
            int(data["start_time"]),
            str(data["marker"]),
            tuple(data.get("argv", ())),
        )


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    state: str
    pgrp: int
    session: int
    start_time: int


def proc_info(pid: int) -> ProcInfo | None:
    """Parse /proc/<pid>/stat; None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()  # the command name in (...) may contain spaces
    return ProcInfo(pid, rest[0], int(rest[2]), int(rest[3]), int(rest[19]))


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_alive(pid: int) -> bool:
    info = proc_info(pid)
    return info is not None and info.state not in ("Z", "X")


def is_ours(record: PidRecord) -> bool:
    """True if the PID is alive and still the process `up` started: same start time, same command."""
    info = proc_info(record.pid)
    if info is None or info.state in ("Z", "X") or info.start_time != record.start_time:
        return False
    return record.marker in _settled_cmdline(record.pid)


def _settled_cmdline(pid: int, wait: float = 1.0) -> str:
    """The cmdline, waiting out the moments it reads empty (mid-exec right after launch, or mid-exit)."""
    deadline = time.monotonic() + wait
    while not (cmdline := proc_cmdline(pid)) and is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return cmdline


def group_members(leader: int) -> list[int]:
    """Live processes in the leader's process group or session (children that changed group included)."""
    members = []
    for entry in Path("/proc").iterdir():
        info = proc_info(int(entry.name)) if entry.name.isdigit() else None
        if info and leader in (info.pgrp, info.session) and info.state not in ("Z", "X"):
            members.append(info.pid)
    return members


def read_pid_records(paths: StackPaths) -> list[PidRecord]:
    records = []
    for pid_file in sorted(paths.run.glob("*.pid")):
        try:
            records.append(PidRecord.from_json(pid_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            print(f"ignoring unreadable PID file {pid_file}", file=sys.stderr)
    return records


def write_pid_record(paths: StackPaths, record: PidRecord) -> None:
    tmp = paths.pid_file(record.name).with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(paths.pid_file(record.name))


def running_records(paths: StackPaths) -> dict[str, PidRecord]:
    """PID records whose process is still ours; stale PID files are removed."""
    running = {}
    for record in read_pid_records(paths):
        if is_ours(record):
            running[record.name] = record
        else:
            paths.pid_file(record.name).unlink(missing_ok=True)
    return running


def _signal_group(leader: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
    for pid in group_members(leader):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(leaders: Iterable[int], timeout: float) -> list[int]:
    """Wait until no leader has a live group member; return the leaders that still have some."""
    deadline = time.monotonic() + timeout
    pending = list(leaders)
    while pending:
        pending = [leader for leader in pending if group_members(leader)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return pending


def stop_records(paths: StackPaths, records: Iterable[PidRecord], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM each record's process group, SIGKILL what is left after `timeout`, remove the PID files.

    A record whose PID is dead or belongs to another program is not signalled; its PID file is removed.
    Returns one human-readable line per record.
    """
    lines, targets = [], []
    for record in records:
        if is_ours(record):
            _signal_group(record.pid, signal.SIGTERM)
            targets.append(record)
        else:
            why = "not running" if not is_alive(record.pid) else "PID now belongs to another program"
            lines.append(f"{record.name}: {why} (pid {record.pid}); not signalled")
            paths.pid_file(record.name).unlink(missing_ok=True)
    left = _wait_gone([r.pid for r in targets], timeout)
    for leader in left:
        _signal_group(leader, signal.SIGKILL)
    _wait_gone(left, 5.0)
    for record in targets:
        how = "killed (SIGKILL)" if record.pid in left else "stopped"
        lines.append(f"{record.name}: {how} (pid {record.pid})")
        paths.pid_file(record.name).unlink(missing_ok=True)
    return lines


def launch(spec: ProcessSpec, paths: StackPaths) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so its whole group can be signalled) and record its PID."""
    log_path = paths.log_file(spec.name)
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== {stamp} crispflow starts {spec.name}: {' '.join(spec.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            spec.argv,
            env={**os.environ, **spec.env},
            cwd=paths.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    info = proc_info(proc.pid)
    start_time = info.start_time if info else 0
    write_pid_record(paths, PidRecord(spec.name, proc.pid, start_time, spec.marker, spec.argv))
    return proc


def run_setup_step(step: SetupStep, paths: StackPaths) -> None:
    log_path = paths.log_file("setup")
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {step.name}: {' '.join(step.argv)}\n".encode())
        log.flush()
        result = subprocess.run(
            step.argv,
            env={**os.environ, **step.env},
            cwd=paths.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(
            f"setup step {step.name!r} failed (exit {result.returncode}); last lines of {log_path}:\n{tail(log_path)}"
        )


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------- ports and health


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


def check_ports(specs: Iterable[ProcessSpec]) -> None:
    """Fail with a clear message if a port a process is about to bind is taken."""
    for spec in specs:
        if spec.port is not None and port_in_use(spec.port):
            hint = f"set {spec.port_env} to another port or " if spec.port_env else ""
            raise StackError(f"port {spec.port} ({spec.label}) is already in use; {hint}stop what is using it")


def health_problem(spec: ProcessSpec, cache: dict[str, Any] | None = None, since: datetime | None = None) -> str | None:
    """One health check: None when healthy, else why not. `cache` shares a response between processes
    reporting on the same URL.

    With `since`, a component's `latest_<key>_heartbeat` must be newer: a heartbeat left in the database
    by a previous run of the stack does not count.
    """
    if spec.health_url is None:
        return None
    cache = {} if cache is None else cache
    if spec.health_url not in cache:
        cache[spec.health_url] = _fetch_health(spec.health_url)
    body = cache[spec.health_url]
    if isinstance(body, str):
        return body
    if spec.health_key is None:
        return None
    key = spec.health_key
    component = body.get(key) if isinstance(body, dict) else None
    if not isinstance(component, dict):
        return f"{key} not reported by {spec.health_url}"
    beat = component.get(f"latest_{key}_heartbeat")
    if component.get("status") != "healthy":
        return f"{key} {component.get('status') or 'unknown'} (last heartbeat: {beat or 'never'})"
    if since is not None and beat and datetime.fromisoformat(beat) < since:
        return f"{key} heartbeat {beat} is from before this start"
    return None


def probe(spec: ProcessSpec, cache: dict[str, Any] | None = None, since: datetime | None = None) -> bool:
    return health_problem(spec, cache, since) is None


def _fetch_health(url: str) -> Any:
    """The health endpoint's JSON body ({} if not JSON) when it answers 200, else a description (str)."""
    try:
        resp = requests.get(url, timeout=HEALTH_TIMEOUT)
    except requests.Timeout:
        return f"no answer from {url} within {HEALTH_TIMEOUT:.0f} s"
    except requests.RequestException:
        return f"nothing answers {url}"
    if resp.status_code != 200:
        return f"{url} answered HTTP {resp.status_code}"
    try:
        return resp.json()
    except ValueError:
        return {}


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    label: str
    pid: int | None
    alive: bool
    port: int | None
    url: str | None
    healthy: bool
    problem: str | None = None  # why it is not healthy


@dataclass(frozen=True)
class StackStatus:
    """A snapshot of the stack, for humans (`format_status`) and scripts (`to_dict`)."""

    profile: str
    processes: tuple[ProcessStatus, ...]
    airflow_url: str
    mlflow_url: str
    username: str
    password: str | None
    home: Path
    lake: str
    logs: Path

    @property
    def healthy(self) -> bool:
        return all(p.alive and p.healthy for p in self.processes)

    @property
    def running(self) -> bool:
        return any(p.alive for p in self.processes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "healthy": self.healthy,
            "processes": [asdict(p) for p in self.processes],
            "airflow_url": self.airflow_url,
            "mlflow_url": self.mlflow_url,
            "mlflow_auth": "none (local profile)",
            "login": {"username": self.username, "password": self.password},
            "paths": {"home": str(self.home), "lake": self.lake, "logs": str(self.logs)},
        }


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
        paths.stack_file.write_text(json.dumps({"profile": self.profile, "ports": asdict(self.ports)}) + "\n")


def resolve_ports(home: Path, environ: Mapping[str, str] | None = None) -> Ports:
    """The ports `up` recorded (if it did), overridden by CRISPFLOW_*_PORT variables that are set."""
    state = StackState.load(StackPaths(home))
    return Ports.from_env(environ, base=state.ports if state else None)


def _lake_display(lake_url: str) -> str:
    """A local path for file:// lakes, the URL otherwise."""
    parsed = urlparse(lake_url)
    return unquote(parsed.path) if parsed.scheme == "file" else lake_url


def collect_status(settings: Settings, profile_name: str | None = None) -> StackStatus:
    """Read-only: PID files, /proc and health endpoints. Creates nothing."""
    paths = StackPaths(settings.home)
    state = StackState.load(paths)
    name = profile_name or (state.profile if state else DEFAULT_PROFILE)
    creds = load_secrets(settings.home)
    profile = build_profile(name, settings, resolve_ports(settings.home), creds or Secrets.unset())
    records = {r.name: r for r in read_pid_records(paths)} if paths.run.is_dir() else {}
    cache: dict[str, Any] = {}
    processes = []
    for spec in profile.processes:
        record = records.get(spec.name)
        alive = record is not None and is_ours(record)
        problem = health_problem(spec, cache) if alive else "not running"
        pid = record.pid if record else None
        healthy = problem is None
        processes.append(ProcessStatus(spec.name, spec.label, pid, alive, spec.port, spec.url, healthy, problem))
    return StackStatus(
        profile.name,
        tuple(processes),
        profile.airflow_url,
        profile.mlflow_url,
        ADMIN_USER,
        creds.admin_password if creds else None,
        settings.home,
        _lake_display(settings.lake_url),
        paths.logs,
    )


def format_status(status: StackStatus) -> str:
    word = "healthy" if status.healthy else ("UNHEALTHY" if status.running else "not running")
    lines = [f"crispflow stack ({status.profile} profile): {word}"]
    for p in status.processes:
        state = "healthy" if p.alive and p.healthy else ("unhealthy" if p.alive else "stopped")
        pid = f"pid {p.pid}" if p.alive else "-"
        lines.append(f"  {p.name:<22} {pid:<11} {state:<10} {p.url or ''}".rstrip())
        if p.alive and p.problem:
            lines.append(f"  {'':<22} {p.problem}")
    lines += format_access(status).splitlines()
    return "\n".join(lines)


def format_access(status: StackStatus) -> str:
    """The URLs, login and paths a person needs (the only secret printed is the admin login)."""
    login = f"{status.username} / {status.password}" if status.password else "(created by `crispflow up`)"
    return "\n".join(
        [
            f"Airflow UI:  {status.airflow_url}",
            f"  login:     {login}",
            f"MLflow UI:   {status.mlflow_url}  (no authentication in the local profile)",
            f"Home:        {status.home}",
            f"Lake:        {status.lake}",
            f"Logs:        {status.logs}",
        ]
    )


# --------------------------------------------------------------------------- up / down


def _check_same_stack(paths: StackPaths, profile: str, ports: Ports, running: Mapping[str, PidRecord]) -> None:
    state = StackState.load(paths)
    if running and state and (state.profile, state.ports) != (profile, ports):
        raise StackError(
            f"the stack in {paths.home} is running (profile {state.profile!r}, {state.ports}); "
            f"run `crispflow down` before starting it with profile {profile!r}, {ports}"
        )


@contextlib.contextmanager
def exclusive(paths: StackPaths) -> Iterator[None]:
    """One `up`/`down` at a time per home (a second `make demo` fails fast instead of racing the first)."""
    paths.run.mkdir(parents=True, exist_ok=True)
    with (paths.run / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `crispflow up` or `down` is running for {paths.home}; wait for it") from None
        yield


def up(
    settings: Settings,
    profile_name: str = DEFAULT_PROFILE,
    *,
    timeout: float = UP_TIMEOUT,
    echo: Callable[[str], None] = print,
) -> StackStatus:
    """Start whatever of the profile is not running, wait until all of it is healthy; idempotent."""
    paths = StackPaths(settings.home)
    paths.create()
    with exclusive(paths):
        return _up(settings, paths, profile_name, timeout, echo)


def _up(
    settings: Settings, paths: StackPaths, profile_name: str, timeout: float, echo: Callable[[str], None]
) -> StackStatus:
    ports = resolve_ports(settings.home)
    creds = load_or_create_secrets(settings.home)
    profile = build_profile(profile_name, settings, ports, creds)
    running = running_records(paths)
    _check_same_stack(paths, profile.name, ports, running)
    to_start = [spec for spec in profile.processes if spec.name not in running]
    if not to_start:
        echo("the stack is already running")
        wait_healthy(profile, paths, {}, timeout)
        ensure_pools(profile, creds)
        return collect_status(settings, profile.name)
    check_ports(to_start)
    write_passwords_file(paths, creds)
    StackState(profile.name, ports).save(paths)
    started: dict[str, subprocess.Popen[bytes]] = {}
    since = datetime.now(UTC)
    try:
        _start_all(profile, paths, to_start, started, echo)
        echo(f"waiting for {', '.join(started)} to become healthy (up to {timeout:.0f} s)")
        wait_healthy(profile, paths, started, timeout, since=since)
        ensure_pools(profile, creds)
    except BaseException:
        echo("start-up failed: stopping the processes this run started")
        stop_records(paths, [r for r in read_pid_records(paths) if r.name in started])
        raise
    return collect_status(settings, profile.name)


def _start_all(
    profile: Profile,
    paths: StackPaths,
    to_start: list[ProcessSpec],
    started: dict[str, subprocess.Popen[bytes]],
    echo: Callable[[str], None],
) -> None:
    done: set[str] = set()
    for spec in to_start:
        for step_name in spec.needs:
            if step_name not in done:
                echo(f"setup: {step_name}")
                run_setup_step(profile.step(step_name), paths)
                done.add(step_name)
        echo(f"starting {spec.name}")
        started[spec.name] = launch(spec, paths)


def ensure_pools(profile: Profile, creds: Secrets) -> None:
    """Create or update the profile's pools through the REST API (one request; an Airflow CLI call is ~7 s)."""
    if profile.pools:
        from crispflow.airflow_api import AirflowAPI

        AirflowAPI(profile.airflow_url, ADMIN_USER, creds.admin_password).set_pools(profile.pools)


def wait_healthy(
    profile: Profile,
    paths: StackPaths,
    started: Mapping[str, subprocess.Popen[bytes]],
    timeout: float,
    poll: float = 1.0,
    since: datetime | None = None,
) -> None:
    """Poll until every process is healthy; fail early, with its log tail, if a process dies.

    `since`: when the `started` processes were launched (their heartbeats must be newer).
    """
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(profile, paths, started)
        cache: dict[str, Any] = {}
        problems = {s.name: health_problem(s, cache, since if s.name in started else None) for s in profile.processes}
        unhealthy = [s for s in profile.processes if problems[s.name]]
        if not unhealthy:
            return
        if time.monotonic() >= deadline:
            details = "\n".join(
                f"--- {s.name}: {problems[s.name]}; last lines of {paths.log_file(s.name)}:\n"
                f"{tail(paths.log_file(s.name), 15)}"
                for s in unhealthy
            )
            raise StackError(f"not healthy after {timeout:.0f} s:\n{details}")
        time.sleep(poll)


def _check_alive(profile: Profile, paths: StackPaths, started: Mapping[str, subprocess.Popen[bytes]]) -> None:
    records = {r.name: r for r in read_pid_records(paths)}
    for spec in profile.processes:
        record = records.get(spec.name)
        if record is not None and is_ours(record):
            continue
        code = _exit_code(started.get(spec.name))
        how = f"exited with code {code}" if code is not None else "is not running"
        log = paths.log_file(spec.name)
        raise StackError(f"{spec.name} {how} during start-up; last lines of {log}:\n{tail(log)}")


def _exit_code(proc: subprocess.Popen[bytes] | None) -> int | None:
    if proc is None:
        return None
    try:
        return proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return None


def down(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop exactly the processes `up` started in this home (by PID file); nothing running is fine."""
    paths = StackPaths(settings.home)
    if not paths.run.is_dir():
        return []
    with exclusive(paths):
        lines = stop_records(paths, read_pid_records(paths), timeout)
        paths.stack_file.unlink(missing_ok=True)
    return lines
