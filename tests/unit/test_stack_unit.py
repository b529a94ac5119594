"""The local stack without services: environment, secrets, ports, PID files, status, and the REST client."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from support.airflow_config import airflow_config_options

from crispflow.settings import Settings
from crispflow.stack import control as stack
from crispflow.stack import main as cli
from crispflow.stack.airflow_api import AirflowAPI, AirflowAPIError
from crispflow.stack.credentials import Secrets, load_or_create_secrets, write_passwords_file
from crispflow.stack.errors import StackError
from crispflow.stack.local import airflow_env
from crispflow.stack.paths import StackPaths
from crispflow.stack.ports import Ports, StackState, port_in_use, resolve_ports
from crispflow.stack.processes import (
    PidRecord,
    group_members,
    is_alive,
    is_ours,
    launch,
    proc_cmdline,
    proc_info,
    read_pid_records,
    stop_records,
    write_pid_record,
)
from crispflow.stack.profiles import build_profile
from crispflow.stack.topology import ProcessSpec, Profile

PORTS = Ports(airflow=18081, mlflow=15001, serve=18001, s3=19001)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CRISPFLOW_HOME", str(tmp_path / "home"))
    for var in (
        "CRISPFLOW_LAKE_URL",
        "CRISPFLOW_AIRFLOW_PORT",
        "CRISPFLOW_MLFLOW_PORT",
        "CRISPFLOW_SERVE_PORT",
        "CRISPFLOW_S3_PORT",
        "CRISPFLOW_PREDICTIONS_URL",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    return Settings.from_env()


# --------------------------------------------------------------------------- environment


def test_airflow_env_has_every_setting_the_stack_needs(settings: Settings) -> None:
    env = airflow_env(settings, PORTS, Secrets.generate())

    required = {
        "PATH",
        "AIRFLOW_HOME",
        "AIRFLOW__CORE__DAGS_FOLDER",
        "AIRFLOW__CORE__PLUGINS_FOLDER",
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
        "AIRFLOW__CORE__PARALLELISM",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__AUTH_MANAGER",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__API__BASE_URL",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER",
        "CRISPFLOW_HOME",
        "CRISPFLOW_PROJECT_ROOT",
        "CRISPFLOW_LAKE_URL",
        "MLFLOW_TRACKING_URI",
    }
    assert required <= env.keys()
    assert all(env.values()), [k for k, v in env.items() if not v]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(settings.project_root / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18081/execution/"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15001"
    assert env["CRISPFLOW_LAKE_URL"] == settings.lake_url


def test_sqlite_url_is_absolute(settings: Settings) -> None:
    url = airflow_env(settings, PORTS, Secrets.generate())["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert url.startswith("sqlite:////")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.is_absolute() and path == settings.home / "airflow" / "airflow.db"


def test_every_airflow_option_exists_in_the_installed_airflow(settings: Settings) -> None:
    known = airflow_config_options()
    env = airflow_env(settings, PORTS, Secrets.generate())
    options = [k.removeprefix("AIRFLOW__").lower().split("__", 1) for k in env if k.startswith("AIRFLOW__")]
    unknown = [f"[{sec}] {opt}" for sec, opt in options if (sec, opt) not in known]
    assert not unknown, f"not options of the installed Airflow: {unknown}"


def test_profile_is_data_with_ports_and_health_checks(settings: Settings) -> None:
    profile = build_profile("local", settings, PORTS, Secrets.generate())
    by_name = {p.name: p for p in profile.processes}
    assert list(by_name) == [
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "model-server",
    ]
    api = by_name["airflow-api-server"]
    assert api.argv[1:] == ("api-server", "--port", "18081", "--host", "127.0.0.1")
    assert api.port == 18081 and api.health_url == "http://127.0.0.1:18081/api/v2/monitor/health"
    assert by_name["mlflow"].port == 15001 and by_name["mlflow"].health_url == "http://127.0.0.1:15001/health"
    assert {by_name[n].health_key for n in by_name if n not in ("mlflow", "model-server")} == {
        "metadatabase",
        "scheduler",
        "dag_processor",
        "triggerer",
    }
    assert all(Path(p.argv[0]).parent == Path(sys.executable).parent for p in profile.processes)
    with pytest.raises(StackError, match="unknown profile 'prod'; known: local, prod-local"):
        build_profile("prod", settings, PORTS, Secrets.generate())


def test_model_server_is_a_managed_process_with_the_stack_settings(settings: Settings) -> None:
    profile = build_profile("local", settings, PORTS, Secrets.generate())
    server = {p.name: p for p in profile.processes}["model-server"]
    assert server.argv == (
        str(Path(sys.executable).parent / "crispflow"),
        *("serve", "--host", "127.0.0.1", "--port", "18001"),
        *("--tracking-uri", "http://127.0.0.1:15001", "--predictions-url", settings.predictions_url),
    )
    assert server.label == "Model server" and server.marker == "crispflow"
    assert server.port == 18001 and server.port_env == "CRISPFLOW_SERVE_PORT"
    assert server.url == profile.serve_url == "http://127.0.0.1:18001"
    assert server.health_url == "http://127.0.0.1:18001/health" and server.health_key is None
    assert server.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15001"
    assert server.env["CRISPFLOW_HOME"] == str(settings.home)
    assert server.env["CRISPFLOW_PREDICTIONS_URL"] == settings.predictions_url
    assert server.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert not [k for k in server.env if k.startswith("AIRFLOW")], "the server gets no Airflow secrets"


def test_the_model_server_needs_no_model_with_several_specs(settings: Settings, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import dataclasses

    from crispflow.serving.cli import add_arguments, build_config

    profile = build_profile("local", settings, PORTS, Secrets.generate())
    server = {p.name: p for p in profile.processes}["model-server"]
    assert "--model" not in server.argv and "CRISPFLOW_SERVE_MODEL" not in server.env
    monkeypatch.delenv("CRISPFLOW_SERVE_MODEL", raising=False)
    pipelines = tmp_path / "several"
    pipelines.mkdir()
    spec = (Path(__file__).resolve().parents[2] / "include/pipelines/lending_club.yaml").read_text()
    for name in ("lending_club", "second", "third"):
        (pipelines / f"{name}.yaml").write_text(spec.replace("name: lending_club", f"name: {name}", 1))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = build_config(parser.parse_args(list(server.argv[2:])), dataclasses.replace(settings,
                                                                                         pipelines_dir=pipelines))
    assert config.model is None and config.discover and config.only == ()  # every pipeline's model
    assert set(config.feedback_labels) == {"crispflow-lending_club", "crispflow-second", "crispflow-third"}


def test_status_prints_the_model_server_url(settings: Settings) -> None:
    text = stack.format_status(stack.collect_status(settings))
    assert "Model server  http://127.0.0.1:8000" in text
    assert "http://127.0.0.1:8000/models" in text
    assert "model-server" in text


def test_down_stops_workers_first_and_storage_last() -> None:
    names = ["s3", "mlflow", "model-server", "airflow-scheduler", "airflow-worker-2", "airflow-api-server"]
    assert sorted(names, key=stack.stop_tier) == [
        "airflow-worker-2",
        "airflow-scheduler",
        "model-server",
        "mlflow",
        "airflow-api-server",
        "s3",
    ]


# --------------------------------------------------------------------------- secrets


def test_secrets_are_created_once_private_and_reused(settings: Settings) -> None:
    first = load_or_create_secrets(settings.home)
    path = settings.home / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secrets(settings.home) == first
    assert json.loads(path.read_text())["admin_password"] == first.admin_password
    assert len(base64.urlsafe_b64decode(first.fernet_key)) == 32
    assert len({first.admin_password, first.jwt_secret, first.api_secret_key}) == 3


def test_loose_secrets_file_is_made_private_again(settings: Settings) -> None:
    load_or_create_secrets(settings.home)
    path = settings.home / "secrets.json"
    path.chmod(0o644)
    load_or_create_secrets(settings.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_status_reads_secrets_but_never_creates_them(settings: Settings) -> None:
    status = stack.collect_status(settings)
    assert not settings.home.exists()
    assert status.password is None and not status.healthy and not status.running


def test_passwords_file_has_simple_auth_manager_format(settings: Settings) -> None:
    paths = StackPaths(settings.home)
    paths.create()
    creds = load_or_create_secrets(settings.home)
    write_passwords_file(paths, creds)
    assert json.loads(paths.passwords_file.read_text()) == {"admin": creds.admin_password,
                                                            "reviewer": creds.reviewer_password,
                                                            "viewer": creds.viewer_password}
    assert len({creds.admin_password, creds.reviewer_password, creds.viewer_password}) == 3
    assert stat.S_IMODE(paths.passwords_file.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- ports


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_port_in_use_is_a_clear_error(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with _listener() as busy, _listener() as free_probe:
        port = busy.getsockname()[1]
        free = free_probe.getsockname()[1]
        free_probe.close()
        monkeypatch.setenv("CRISPFLOW_AIRFLOW_PORT", str(port))
        monkeypatch.setenv("CRISPFLOW_MLFLOW_PORT", str(free))
        with pytest.raises(StackError) as err:
            stack.up(settings, echo=lambda _: None)
    expected = (
        f"port {port} (Airflow api-server) is already in use; "
        "set CRISPFLOW_AIRFLOW_PORT to another port or stop what is using it"
    )
    assert str(err.value) == expected
    assert not list((settings.home / "run").glob("*.pid")), "nothing may start when a port is taken"


def test_cli_reports_port_in_use_and_exits_1(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _listener() as busy:
        monkeypatch.setenv("CRISPFLOW_MLFLOW_PORT", str(busy.getsockname()[1]))
        monkeypatch.setenv("CRISPFLOW_AIRFLOW_PORT", "18082")
        assert cli.main(["up"]) == 1
    assert "(MLflow tracking server) is already in use; set CRISPFLOW_MLFLOW_PORT" in capsys.readouterr().err


def test_port_in_use_detection() -> None:
    with _listener() as sock:
        port = sock.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_bad_port_variable_is_rejected() -> None:
    with pytest.raises(StackError, match="not a port number"):
        Ports.from_env({"CRISPFLOW_AIRFLOW_PORT": "eighty"})
    assert Ports.from_env({"CRISPFLOW_MLFLOW_PORT": "5001"}) == Ports(8080, 5001)


def test_recorded_ports_are_reused_unless_overridden(settings: Settings) -> None:
    paths = StackPaths(settings.home)
    paths.create()
    StackState("local", Ports(18090, 15090)).save(paths)
    assert resolve_ports(settings.home, {}) == Ports(18090, 15090)
    assert resolve_ports(settings.home, {"CRISPFLOW_AIRFLOW_PORT": "18091"}) == Ports(18091, 15090)
    assert resolve_ports(settings.home, {"CRISPFLOW_SERVE_PORT": "18092"}).serve == 18092


def test_a_stack_file_from_before_the_model_server_still_loads(settings: Settings) -> None:
    paths = StackPaths(settings.home)
    paths.create()
    paths.stack_file.write_text(json.dumps({"profile": "local", "ports": {"airflow": 18090, "mlflow": 15090}}))
    assert resolve_ports(settings.home, {}) == Ports(18090, 15090, serve=8000)


# --------------------------------------------------------------------------- PID files


@pytest.fixture
def paths(settings: Settings) -> StackPaths:
    result = StackPaths(settings.home)
    result.create()
    return result


@pytest.fixture
def foreign() -> Any:
    """A process crispflow did not start."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _record(name: str, pid: int, marker: str, start_delta: int = 0) -> PidRecord:
    info = proc_info(pid)
    assert info is not None
    return PidRecord(name, pid, info.start_time + start_delta, marker)


def test_refuses_to_signal_a_pid_whose_cmdline_is_not_ours(paths: StackPaths, foreign: Any) -> None:
    record = _record("airflow-scheduler", foreign.pid, marker="airflow")
    write_pid_record(paths, record)
    assert not is_ours(record)

    lines = stop_records(paths, [record], timeout=1)

    assert foreign.poll() is None, "a process we did not start was signalled"
    assert "not signalled" in lines[0]
    assert not paths.pid_file("airflow-scheduler").exists()


def test_refuses_to_signal_a_reused_pid(paths: StackPaths, foreign: Any) -> None:
    record = _record("sleeper", foreign.pid, marker="sleep", start_delta=-1)  # same cmdline, other start time
    assert not is_ours(record)
    stop_records(paths, [record], timeout=1)
    assert foreign.poll() is None


def test_down_reports_stale_pid_files_and_exits_0(
    settings: Settings, paths: StackPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pid_record(paths, PidRecord("mlflow", 2**22 + 1, 1, "mlflow"))
    assert cli.main(["down"]) == 0
    assert "mlflow: not running" in capsys.readouterr().out
    assert not list(paths.run.glob("*.pid"))
    assert cli.main(["down"]) == 0


def test_launch_then_stop_kills_the_whole_process_group(paths: StackPaths) -> None:
    child = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    spec = ProcessSpec("worker", "test worker", (sys.executable, "-c", child))
    proc = launch(spec, paths)
    record = PidRecord.from_json(paths.pid_file("worker").read_text())
    assert record.pid == proc.pid and is_ours(record)
    deadline = time.monotonic() + 10
    while len(group_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = group_members(proc.pid)
    assert len(members) == 2

    lines = stop_records(paths, read_pid_records(paths), timeout=5)

    assert lines == [f"worker: stopped (pid {proc.pid})"]
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not any(is_alive(pid) for pid in members)
    assert not paths.pid_file("worker").exists()


def test_status_of_a_half_running_stack(settings: Settings, paths: StackPaths,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from support.stack import free_ports

    for var, port in zip(("CRISPFLOW_AIRFLOW_PORT", "CRISPFLOW_MLFLOW_PORT", "CRISPFLOW_SERVE_PORT"), free_ports(3),
                         strict=True):  # nothing answers there, whatever else runs on this machine's default ports
        monkeypatch.setenv(var, str(port))
    settings = Settings.from_env()
    spec = ProcessSpec("airflow-triggerer", "x", (sys.executable, "-c", "import time; time.sleep(60)"))
    proc = launch(spec, paths)
    try:
        status = stack.collect_status(settings)
        by_name = {p.name: p for p in status.processes}
        assert by_name["airflow-triggerer"].alive and by_name["airflow-triggerer"].pid == proc.pid
        assert not by_name["airflow-triggerer"].healthy  # nothing answers its health URL
        assert not by_name["mlflow"].alive
        data = status.to_dict()
        assert data["healthy"] is False and data["login"]["username"] == "admin"
        assert set(data["paths"]) == {"home", "lake", "logs"}
        assert cli.main(["status", "--json"]) == 1
    finally:
        stack.down(settings, timeout=5)
    assert proc.poll() is not None


def test_start_up_failure_shows_the_log_tail_and_stops_what_it_started(paths: StackPaths) -> None:
    never = "http://127.0.0.1:1/health"  # nothing answers: only the crash can end the wait early
    crash_argv = (sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)")
    crash = ProcessSpec("crasher", "x", crash_argv, health_url=never)
    sleeper = ProcessSpec("sleeper", "y", (sys.executable, "-c", "import time; time.sleep(60)"), health_url=never)
    profile = Profile("test", (), (sleeper, crash), "http://127.0.0.1:1", "http://127.0.0.1:1")
    started = {spec.name: launch(spec, paths) for spec in profile.processes}
    try:
        with pytest.raises(StackError, match=r"(?s)crasher exited with code 3.*boom: bad config"):
            stack.wait_healthy(profile, paths, started, timeout=10, poll=0.1)
    finally:
        stop_records(paths, read_pid_records(paths), timeout=5)
    assert started["sleeper"].poll() is not None


def test_pid_record_round_trip() -> None:
    record = PidRecord("mlflow", 42, 1234, "mlflow", ("mlflow", "server"))
    assert PidRecord.from_json(record.to_json()) == record


# --------------------------------------------------------------------------- CLI output


def test_demo_summary_is_printed_as_key_value_lines() -> None:
    text = cli.format_mapping({"dataset_version_id": "ds-1", "rows": {"in": 3, "published": 2}, "tags": ["a", "b"]})
    assert text.splitlines() == ["dataset_version_id: ds-1", "rows:", "  in: 3", "  published: 2", "tags: a, b"]


# --------------------------------------------------------------------------- REST client


class FakeResponse:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code = status
        self.text = json.dumps(body) if body is not None else ""
        self.content = self.text.encode()

    def json(self) -> Any:
        return json.loads(self.text)


class FakeSession:
    """Answers from a script of (method, path) -> list of responses or exceptions, in order."""

    def __init__(self, script: dict[tuple[str, str], list[Any]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        path = url.removeprefix("http://af")
        self.calls.append((method, path, kwargs))
        answer = self.script[(method, path)].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _api(script: dict[tuple[str, str], list[Any]]) -> tuple[AirflowAPI, FakeSession]:
    session = FakeSession({("POST", "/auth/token"): [FakeResponse(201, {"access_token": "t1"})] * 3, **script})
    return AirflowAPI("http://af", "admin", "pw", retries=2, backoff=0, session=session), session  # type: ignore[arg-type]


def test_client_sends_bearer_token_and_retries_5xx_and_connection_errors() -> None:
    api, session = _api(
        {
            ("GET", "/api/v2/dags/d"): [
                requests.ConnectionError("refused"),
                FakeResponse(503, {"detail": "busy"}),
                FakeResponse(200, {"dag_id": "d"}),
            ]
        }
    )
    assert api.dag("d") == {"dag_id": "d"}
    dag_calls = [c for c in session.calls if c[1] == "/api/v2/dags/d"]
    assert len(dag_calls) == 3
    assert dag_calls[-1][2]["headers"] == {"Authorization": "Bearer t1"}
    assert session.calls[0][2]["json"] == {"username": "admin", "password": "pw"}


def test_client_gives_up_after_bounded_retries() -> None:
    api, _ = _api({("GET", "/api/v2/dags/d"): [FakeResponse(500, {"detail": "db down"})] * 3})
    with pytest.raises(AirflowAPIError, match="gave up after 3 attempts") as err:
        api.dag("d")
    assert err.value.status == 500 and "db down" in (err.value.body or "")


def test_client_error_includes_the_response_body() -> None:
    api, _ = _api({("POST", "/api/v2/dags/d/dagRuns"): [FakeResponse(422, {"detail": "conf: bad field"})]})
    with pytest.raises(AirflowAPIError, match=r"HTTP 422.*conf: bad field") as err:
        api.trigger("d", {"x": 1})
    assert err.value.status == 422


def test_client_refreshes_an_expired_token_once() -> None:
    api, session = _api({("GET", "/api/v2/dags/d"): [FakeResponse(401, {}), FakeResponse(200, {"dag_id": "d"})]})
    assert api.dag("d")["dag_id"] == "d"
    assert sum(c[1] == "/auth/token" for c in session.calls) == 2


def test_trigger_sends_null_logical_date_and_its_own_run_id() -> None:
    api, session = _api({("POST", "/api/v2/dags/d/dagRuns"): [FakeResponse(200, {"dag_run_id": "r1"})]})
    api.trigger("d", {"pipeline": "p"})
    body = session.calls[-1][2]["json"]
    assert body["logical_date"] is None and body["conf"] == {"pipeline": "p"}
    assert body["dag_run_id"].startswith("manual__")


def test_xcom_value_is_decoded() -> None:
    path = "/api/v2/dags/d/dagRuns/r%3A1/taskInstances/publish/xcomEntries/return_value"
    api, _ = _api({("GET", path): [FakeResponse(200, {"value": '{"dataset_version_id": "ds-1"}'})]})
    assert api.xcom("d", "r:1", "publish") == {"dataset_version_id": "ds-1"}


def test_wait_for_dag_fails_fast_on_its_import_error() -> None:
    error = {"filename": "01_ingest_validate.py", "stack_trace": "ModuleNotFoundError: nope"}
    api, _ = _api(
        {
            ("GET", "/api/v2/dags/ingest_validate"): [FakeResponse(404, {"detail": "not found"})],
            ("GET", "/api/v2/importErrors"): [FakeResponse(200, {"import_errors": [error], "total_entries": 1})],
        }
    )
    with pytest.raises(AirflowAPIError, match=r"(?s)does not import.*ModuleNotFoundError: nope"):
        api.wait_for_dag("ingest_validate", timeout=60)


def test_the_cli_never_imports_airflow() -> None:
    code = (
        "import sys, crispflow.stack.main, crispflow.stack.control, crispflow.stack.airflow_api; "
        "assert not [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_second_up_or_down_fails_fast_while_one_is_running(settings: Settings, paths: StackPaths) -> None:
    with stack.exclusive(paths):
        with pytest.raises(StackError, match="another `crispflow up` or `down` is running"):
            stack.up(settings, echo=lambda _: None)
        with pytest.raises(StackError, match="another"):
            stack.down(settings)
    assert stack.down(settings) == []


# --------------------------------------------------------------------------- prod-local profile


def test_prod_local_profile_is_the_production_topology(settings: Settings) -> None:
    from crispflow.stack.prod_local import Namespace

    creds = Secrets.generate()
    profile = build_profile("prod-local", settings, PORTS, creds)
    by_name = {p.name: p for p in profile.processes}
    assert list(by_name) == [
        "s3",
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker-1",
        "airflow-worker-2",
        "model-server",
        "telemetry",
        "alertmanager",
        "prometheus",
    ]
    ns = Namespace.of(settings.home)
    assert [s.name for s in profile.setup] == [
        "reset-state",
        "buckets",
        "mlflow-auth-config",
        "mlflow-users",
        "ledger-reader",
        "monitoring-config",
        "db-migrate",
    ]
    assert profile.step("db-migrate").argv[-2:] == ("-m", "crispflow_airflow.db_setup")
    assert profile.step("reset-state").argv[-3:] == ns.databases
    assert profile.step("ledger-reader").argv[-2:] == (ns.ledger_db, ns.ledger_reader)
    scheduler = by_name["airflow-scheduler"].env
    assert scheduler["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f"@127.0.0.1:5432/{ns.airflow_db}")
    assert scheduler["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://127.0.0.1:6379")
    assert scheduler["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == ns.queue
    assert scheduler["CRISPFLOW_LAKE_URL"] == "s3://crispflow-lake/lake"
    lake_conn = json.loads(by_name["airflow-triggerer"].env["AIRFLOW_CONN_CRISPFLOW_S3"])
    assert lake_conn["extra"]["endpoint_url"] == "http://127.0.0.1:19001"
    workers = [by_name["airflow-worker-1"], by_name["airflow-worker-2"]]
    assert [w.argv[w.argv.index("--celery-hostname") + 1] for w in workers] == ["worker1@%h", "worker2@%h"]
    assert all(w.argv[w.argv.index("--queues") + 1] == ns.queue and w.marker == "celery" for w in workers)
    assert [w.env["CRISPFLOW_WORKER_NAME"] for w in workers] == ["worker1", "worker2"]
    mlflow = by_name["mlflow"]
    assert mlflow.argv[mlflow.argv.index("--app-name") + 1] == "basic-auth"
    assert mlflow.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == creds.mlflow_admin_password
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"].endswith(f"/{ns.mlflow_db}")
    assert not any(creds.mlflow_admin_password in arg for p in profile.processes for arg in p.argv)
    server = by_name["model-server"]
    assert server.env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:19001"
    assert server.env["MLFLOW_TRACKING_USERNAME"] == "crispflow-serving"
    assert server.env["MLFLOW_TRACKING_PASSWORD"] == creds.mlflow_serving_password
    assert "--predictions-url" in server.argv and "s3://crispflow-predictions/predictions" in server.argv
    assert not [k for k in server.env if k.startswith("AIRFLOW")], "the server gets no Airflow secrets"
    assert profile.mlflow_auth.startswith("basic auth")


def test_prod_local_names_derive_from_the_home(tmp_path: Path) -> None:
    from crispflow.stack.prod_local import Namespace

    one, two = Namespace.of(tmp_path / "a"), Namespace.of(tmp_path / "b")
    assert one == Namespace.of(tmp_path / "a") and one != two
    assert not set(one.databases) & set(two.databases) and one.redis_prefix != two.redis_prefix
    assert one.ledger_reader != two.ledger_reader  # roles are per server: one per home too
    assert all(name.islower() and name.replace("_", "").isalnum() for name in (*one.databases, one.ledger_reader))


def test_prod_local_rejects_a_bad_server_url(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISPFLOW_REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(StackError, match=r"CRISPFLOW_REDIS_URL: must be redis:// or rediss://host\[:port\]"):
        build_profile("prod-local", settings, PORTS, Secrets.generate())


def test_every_prod_local_airflow_option_exists(settings: Settings) -> None:
    known = airflow_config_options()
    env = {p.name: p for p in build_profile("prod-local", settings, PORTS, Secrets.generate()).processes}
    options = [
        k.removeprefix("AIRFLOW__").lower().split("__", 1)
        for k in env["airflow-worker-1"].env
        if k.startswith("AIRFLOW__")
    ]
    # [celery_broker_transport_options] is passed to Celery as it is: any transport option is valid there
    unknown = [f"[{s}] {o}" for s, o in options if (s, o) not in known and s != "celery_broker_transport_options"]
    assert not unknown, f"not options of the installed Airflow: {unknown}"


def test_secrets_written_before_mlflow_auth_get_its_password_added(settings: Settings) -> None:
    path = settings.home / "secrets.json"
    path.parent.mkdir(parents=True)
    old = {"admin_password": "a", "jwt_secret": "j", "api_secret_key": "k", "fernet_key": "f"}
    path.write_text(json.dumps(old))
    creds = load_or_create_secrets(settings.home)
    assert (creds.admin_password, creds.fernet_key) == ("a", "f"), "existing secrets are kept"
    assert len(creds.mlflow_admin_password) >= 12 and creds.mlflow_flask_secret
    assert len(creds.mlflow_ui_password) >= 12 and len(creds.ledger_reader_password) >= 12
    assert load_or_create_secrets(settings.home) == creds
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_worker_reports_its_own_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from crispflow.stack.worker_identity import hostname

    monkeypatch.delenv("CRISPFLOW_WORKER_NAME", raising=False)
    plain = hostname()
    monkeypatch.setenv("CRISPFLOW_WORKER_NAME", "worker2")
    assert hostname() == f"worker2.{plain}"


def test_the_pool_the_stack_creates_is_the_one_the_promotion_operators_use() -> None:
    from crispflow.release.promotion import POOL
    from crispflow_airflow.db_setup import commands

    source = (Path(__file__).resolve().parents[2] / "plugins/crispflow_airflow/operators/promotion.py").read_text()
    assert ["pools", "set", POOL] in [argv[:3] for argv in commands()]
    assert "from crispflow.release.promotion import POOL" in source


def test_a_failed_start_also_stops_processes_whose_title_changed(paths: StackPaths, tmp_path: Path) -> None:
    """A process whose command line lost its marker looks dead to `up`, which fails; it must not live on."""
    pid_file = tmp_path / "retitled.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    retitled = ProcessSpec("retitled", "x", (sys.executable, "-c", code), keeps="no-such-word")
    profile = Profile("test", (), (retitled,), "http://127.0.0.1:1", "http://127.0.0.1:1")
    with pytest.raises(StackError, match="retitled is not running during start-up"):
        stack._start(profile, paths, [retitled], timeout=10, echo=lambda _: None)
    assert not read_pid_records(paths), "PID files left behind"
    survivors = [
        entry.name
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and str(pid_file) in proc_cmdline(int(entry.name)) and is_alive(int(entry.name))
    ]
    assert not survivors, "the process outlived the failed `up`"
