"""The stack commands: `up` starts what is not running and waits until all of it is healthy, `down` stops
exactly what `up` started, `collect_status` reports on both; one `up`/`down` at a time per home.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from crispflow.settings import Settings
from crispflow.stack.credentials import (
    ADMIN_USER,
    AIRFLOW_USERS,
    Secrets,
    load_or_create_secrets,
    load_secrets,
    write_passwords_file,
)
from crispflow.stack.errors import StackError
from crispflow.stack.health import check_ports, health_problem
from crispflow.stack.monitoring import UI_NOTES
from crispflow.stack.paths import StackPaths
from crispflow.stack.ports import Ports, StackState, resolve_ports
from crispflow.stack.processes import (
    STOP_TIMEOUT,
    PidRecord,
    is_ours,
    launch,
    read_pid_records,
    run_setup_step,
    running_records,
    stop_records,
    tail,
)
from crispflow.stack.profiles import DEFAULT_PROFILE, build_profile
from crispflow.stack.topology import MODEL_SERVER, S3_SERVER, WORKER_PREFIX, ProcessSpec, Profile

UP_TIMEOUT = 180.0
# The model server tokens `up` generates (name → the Secrets field holding it, scopes); serving/tokens.py.
LOCAL_TOKENS = {
    "demo-client": ("serve_client_token", ("predict", "feedback")),
    "admin": ("serve_admin_token", ("admin", "metrics")),
    "prometheus": ("serve_metrics_token", ("metrics",)),
}
SHOW_SECRETS_HINT = "crispflow status --show-secrets"
# The crispflow UI plugin's pages, under the Airflow api-server (plugins/crispflow_plugin.py mounts its app at
# /crispflow; the Airflow UI's navigation shows them too): name → path.
UI_PAGES = {"models": "/crispflow/models", "promotions": "/crispflow/promotions", "drift": "/crispflow/drift"}


def secrets_visible(show: bool | None = None) -> bool:
    """Whether secrets may be printed: `show` if given (--show-secrets), else never when $CI is truthy (CI logs
    keep no password or token; every hosted CI sets it), and otherwise yes: `make demo` shows a person the
    credentials of the stack it just started, in their terminal or in their own log file."""
    if show is not None:
        return show
    return os.environ.get("CI", "").strip().lower() in ("", "0", "false", "no", "off")


def serve_tokens_file(settings: Settings) -> Path:
    """Where `up` writes the model server's token hashes (the server gets it as $CRISPFLOW_SERVE_TOKENS_FILE)."""
    from crispflow.serving.tokens import TOKENS_FILE_NAME

    return settings.home / TOKENS_FILE_NAME


def write_serve_tokens(settings: Settings, creds: Secrets) -> None:
    """Put the hashes of the generated tokens in the server's token file (idempotent; a token revoked with
    `crispflow serve token revoke` stays revoked; other tokens in the file are kept)."""
    from crispflow.serving.tokens import ensure_token

    for name, (field_name, scopes) in LOCAL_TOKENS.items():
        if secret := getattr(creds, field_name, ""):
            ensure_token(serve_tokens_file(settings), name, secret, scopes)


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
    serve_url: str | None = None
    mlflow_auth: str = "none (local profile)"
    serve_tokens: tuple[tuple[str, str, str | None], ...] = ()  # (name, scopes, secret) of the generated tokens
    secrets_file: Path | None = None
    people: tuple[tuple[str, str, str | None], ...] = ()  # (user, role, password) of the other Airflow logins
    monitoring: tuple[tuple[str, str], ...] = ()  # (name, URL) of Prometheus and Alertmanager (prod-local)
    monitoring_password: str | None = None  # their web login `admin`

    @property
    def healthy(self) -> bool:
        return all(p.alive and p.healthy for p in self.processes)

    @property
    def ui_pages(self) -> dict[str, str]:
        """The crispflow UI plugin's pages (UI_PAGES) on this stack's Airflow: name → URL."""
        return {name: self.airflow_url.rstrip("/") + path for name, path in UI_PAGES.items()}

    @property
    def running(self) -> bool:
        return any(p.alive for p in self.processes)

    def to_dict(self, show_secrets: bool | None = None) -> dict[str, Any]:
        """For scripts; the secrets (password, tokens) only when `secrets_visible(show_secrets)`."""
        show = secrets_visible(show_secrets)
        return {
            "profile": self.profile,
            "healthy": self.healthy,
            "processes": [asdict(p) for p in self.processes],
            "airflow_url": self.airflow_url,
            "ui_pages": self.ui_pages,
            "mlflow_url": self.mlflow_url,
            "serve_url": self.serve_url,
            "mlflow_auth": self.mlflow_auth,
            "login": {"username": self.username, "password": self.password if show else None},
            "people": [{"username": u, "role": r, "password": p if show else None} for u, r, p in self.people],
            "serve_tokens": [{"name": n, "scopes": sc.split(","), "token": t if show else None}
                             for n, sc, t in self.serve_tokens],
            "secrets_file": str(self.secrets_file) if self.secrets_file else None,
            "monitoring": {name: {"url": url, "username": "admin",
                                  "password": self.monitoring_password if show else None}
                           for name, url in self.monitoring},
            "paths": {"home": str(self.home), "lake": self.lake, "logs": str(self.logs)},
        }


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
        _lake_display(_lake_url(profile, settings)),
        paths.logs,
        profile.serve_url,
        profile.mlflow_auth,
        tuple((name, ",".join(scopes), getattr(creds, field_name, "") or None)
              for name, (field_name, scopes) in LOCAL_TOKENS.items()) if creds and profile.serve_url else (),
        paths.secrets_file,
        tuple((user, role, getattr(creds, f"{user}_password", "") or None)
              for user, role in AIRFLOW_USERS.items() if user != ADMIN_USER) if creds else (),
        profile.monitoring,
        (creds.monitoring_admin_password or None) if creds else None,
    )


def _lake_url(profile: Profile, settings: Settings) -> str:
    """The lake the profile's processes use (prod-local puts it on S3), else the settings' own."""
    for spec in profile.processes:
        if url := spec.env.get("CRISPFLOW_LAKE_URL"):
            return url
    return settings.lake_url


def _lake_display(lake_url: str) -> str:
    """A local path for file:// lakes, the URL otherwise."""
    parsed = urlparse(lake_url)
    return unquote(parsed.path) if parsed.scheme == "file" else lake_url


def format_status(status: StackStatus, show_secrets: bool | None = None) -> str:
    word = "healthy" if status.healthy else ("UNHEALTHY" if status.running else "not running")
    lines = [f"crispflow stack ({status.profile} profile): {word}"]
    for p in status.processes:
        state = "healthy" if p.alive and p.healthy else ("unhealthy" if p.alive else "stopped")
        pid = f"pid {p.pid}" if p.alive else "-"
        lines.append(f"  {p.name:<22} {pid:<11} {state:<10} {p.url or ''}".rstrip())
        if p.alive and p.problem:
            lines.append(f"  {'':<22} {p.problem}")
    lines += format_access(status, show_secrets).splitlines()
    return "\n".join(lines)


def format_access(status: StackStatus, show_secrets: bool | None = None) -> str:
    """The URLs, login, model server tokens and paths a person needs. The secrets (admin password, tokens) only
    when `secrets_visible(show_secrets)`; otherwise where to find them."""
    show = secrets_visible(show_secrets)
    hidden = f"(hidden: `{SHOW_SECRETS_HINT}` or {status.secrets_file or 'secrets.json'})"
    login = (f"{status.username} / {status.password}" if show else f"{status.username} / {hidden}") \
        if status.password else "(created by `crispflow up`)"
    people = [f"  {'other':<10} {user} ({role}) / {(pw if show else hidden) if pw else '(created by `crispflow up`)'}"
              for user, role, pw in status.people]
    pages = [f"  {'' if i else 'pages:':<10} {name:<11} {url}" for i, (name, url) in enumerate(status.ui_pages.items())]
    mlflow_auth = "no authentication" if status.mlflow_auth.startswith("none") else status.mlflow_auth
    serve = [f"Model server  {status.serve_url}  (every pipeline's model: {status.serve_url}/models)"] \
        if status.serve_url else []
    for name, scopes, token in status.serve_tokens:
        serve.append(f"  token {name + ' (' + scopes + ')':<36} {token if show and token else hidden}")
    if status.serve_tokens:
        serve.append("  (send it as: Authorization: Bearer <token>; `crispflow serve token create` issues more)")
    secret = status.monitoring_password if show else hidden
    monitoring = [f"{name.capitalize() + ':':<12} {url}  (login admin / {secret or '(created by `crispflow up`)'}; "
                  f"{UI_NOTES.get(name, '')})" for name, url in status.monitoring]
    return "\n".join(
        [
            f"Airflow UI:  {status.airflow_url}",
            f"  login:     {login}",
            *people,
            *pages,
            f"MLflow UI:   {status.mlflow_url}  ({mlflow_auth})",
            *serve,
            *monitoring,
            f"Home:        {status.home}",
            f"Lake:        {status.lake}",
            f"Logs:        {status.logs}",
        ]
    )


# --------------------------------------------------------------------------- up / down


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
        ports = resolve_ports(settings.home)
        creds = load_or_create_secrets(settings.home)
        profile = build_profile(profile_name, settings, ports, creds)
        running = running_records(paths)
        _check_same_stack(paths, profile.name, ports, running)
        to_start = [spec for spec in profile.processes if spec.name not in running]
        write_serve_tokens(settings, creds)  # idempotent: also when everything already runs
        if to_start:
            check_ports(to_start)
            write_passwords_file(paths, creds)
            StackState(profile.name, ports).save(paths)
            _start(profile, paths, to_start, timeout, echo)
        else:
            echo("the stack is already running")
            wait_healthy(profile, paths, {}, timeout)
        return collect_status(settings, profile.name)


def _check_same_stack(paths: StackPaths, profile: str, ports: Ports, running: Mapping[str, PidRecord]) -> None:
    state = StackState.load(paths)
    if running and state and (state.profile, state.ports) != (profile, ports):
        raise StackError(
            f"the stack in {paths.home} is running (profile {state.profile!r}, {state.ports}); "
            f"run `crispflow down` before starting it with profile {profile!r}, {ports}"
        )


def _start(
    profile: Profile, paths: StackPaths, to_start: list[ProcessSpec], timeout: float, echo: Callable[[str], None]
) -> None:
    """Run the setup steps and start `to_start` in order, wait until healthy; on failure stop what started."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    since = datetime.now(UTC)
    done: set[str] = set()
    try:
        for spec in to_start:
            for step_name in spec.needs:
                if step_name not in done:
                    echo(f"setup: {step_name}")
                    run_setup_step(profile.step(step_name), paths)
                    done.add(step_name)
            echo(f"starting {spec.name}")
            started[spec.name] = launch(spec, paths)
        echo(f"waiting for {', '.join(started)} to become healthy (up to {timeout:.0f} s)")
        wait_healthy(profile, paths, started, timeout, since=since)
    except BaseException:
        echo("start-up failed: stopping the processes this run started")
        stop_records(paths, [r for r in read_pid_records(paths) if r.name in started])
        _kill_unrecognised(started)
        raise


def _kill_unrecognised(started: Mapping[str, subprocess.Popen[bytes]]) -> None:
    """SIGKILL the session of any process this run started that `stop_records` did not recognise (its command
    line lost its marker) and that still runs: its PID cannot have been reused while we hold its Popen."""
    for proc in started.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


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


SERVERS = frozenset({"airflow-api-server", "mlflow"})


def stop_tier(name: str) -> int:
    """When `down` stops a process, by name: 0 Celery workers (a task still finishing reports to the
    api-server and writes to MLflow and S3), 1 the other Airflow components (and any unknown name), 2 the model
    server (it flushes its prediction log to the lake on SIGTERM), 3 the api-server and MLflow, 4 storage (S3).
    """
    if name.startswith(WORKER_PREFIX):
        return 0
    if name == MODEL_SERVER:
        return 2
    if name in SERVERS:
        return 3
    if name == S3_SERVER:
        return 4
    return 1


def down(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop exactly the processes `up` started in this home (by PID file), tier by tier (`stop_tier`);
    nothing running is fine."""
    paths = StackPaths(settings.home)
    if not paths.run.is_dir():
        return []
    with exclusive(paths):
        records = read_pid_records(paths)
        lines: list[str] = []
        for tier in sorted({stop_tier(r.name) for r in records}):
            lines += stop_records(paths, [r for r in records if stop_tier(r.name) == tier], timeout)
        paths.stack_file.unlink(missing_ok=True)
    return lines
