"""The production topology (docker-compose.yaml, Dockerfile, .env.example), checked without a Docker engine.

The files are parsed, not run: the Compose Specification rules that hold without its schema, pinned images,
healthchecks and dependencies, secrets only as ${VAR} references that .env.example defines with placeholders,
auth on in Airflow and MLflow, Airflow settings that exist in the installed Airflow and that match the local
stack (include/crispflow/stack/local.py) except for the listed, deliberate differences.
"""

from __future__ import annotations

import configparser
import functools
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support.airflow_config import airflow_config_options, package_dir

from crispflow.pools import POOLS
from crispflow.settings import Settings
from crispflow.stack.credentials import MLFLOW_AIRFLOW_USER, MLFLOW_SERVING_USER, Secrets
from crispflow.stack.local import SIMPLE_AUTH_MANAGER, airflow_env
from crispflow.stack.ports import Ports
from crispflow.stack.prod_setup import AUTH_CONFIG, LEDGER_READER_GRANTS, MLFLOW_PASSWORD_ENV, MLFLOW_USERS
from crispflow.stack.topology import (
    AIRFLOW_SECRETS,
    API_SERVER,
    LAKE_CONNECTION_HOLDERS,
    LAKE_READERS,
    MLFLOW_USER_OF,
    WORKER,
    WORKER_PREFIX,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
REQUIRED_SERVICES = {
    *AIRFLOW_SERVICES,
    *("postgres", "redis", "mlflow", "mlflow-init", "minio", "minio-init", "model-server", "prometheus", "grafana"),
}
ONE_SHOT = {"airflow-init", "minio-init", "mlflow-init"}  # run to completion; everything else is long-running
# Variables an Airflow service may add to the shared environment (never an Airflow setting or connection).
SERVICE_ENV_EXTRAS = {"airflow-worker": {"DUMB_INIT_SETSID"}}
# compose service -> the component it is in topology.AIRFLOW_SECRETS (airflow-init: migrates and checks the keys)
AIRFLOW_COMPONENT = {
    "airflow-api-server": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": WORKER,
}
INIT_SECRETS = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"}
LAKE_CONNECTION = "AIRFLOW_CONN_CRISPFLOW_LAKE"
# what must never reach a worker (DAG code): the control plane's secrets and the .env entries behind them
CONTROL_PLANE_SECRETS = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
)
CONTROL_PLANE_ENV_VARS = (
    "AIRFLOW_DB_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "POSTGRES_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_DB_PASSWORD",
)
PUBLISHED_PORTS = {
    "airflow-api-server": 8080,
    "mlflow": 5000,
    "model-server": 8000,
    "minio": 9001,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3000,
}
MLFLOW_CLI_SOURCES = ("cli/__init__.py", "utils/cli_args.py", "environment_variables.py")
# Bind mounts of configuration: they must exist, and refuse to start rather than create empty folders.
CONFIG_MOUNTS = {"include/monitoring/prometheus.yml", "include/monitoring/grafana",
                 "include/monitoring/alertmanager.yml"}
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")  # compose-spec/compose-spec schema/, Apache-2.0

# --- the Compose Specification (compose-spec/compose-spec, schema/compose-spec.json, as of June 2026) -----------
TOP_LEVEL_KEYS = {"services", "volumes", "networks", "secrets", "configs", "name"}  # + x-* extensions
SERVICE_KEYS = {
    *("annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent"),
    *("command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota"),
    *("cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on"),
    *("deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname"),
    *("entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts", "gpus"),
    *("group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "label_file", "labels"),
    *("links", "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit"),
    *("models", "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit"),
    *("platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "provider", "pull_policy"),
    *("pull_refresh_after", "read_only", "restart", "runtime", "scale", "secrets", "security_opt", "shm_size"),
    *("stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits"),
    *("use_api_socket", "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir"),
}
HEALTHCHECK_KEYS = {"disable", "interval", "retries", "start_interval", "start_period", "test", "timeout"}
DEPENDS_ON_KEYS = {"condition", "restart", "required"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SECRET_KEYS = {"driver", "driver_opts", "environment", "external", "file", "labels", "name", "template_driver"}
CONFIG_KEYS = {"content", "environment", "external", "file", "labels", "name", "template_driver"}
VOLUME_KEYS = {"driver", "driver_opts", "external", "labels", "name"}
SERVICE_FILE_REF_KEYS = {"source", "target", "uid", "gid", "mode"}  # a service's secrets:/configs: long syntax
RESTART_POLICY = re.compile(r"no|always|unless-stopped|on-failure(:\d+)?")

# --- secrets -----------------------------------------------------------------------------------------------------
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN")
PLACEHOLDER = "change-me"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}; `$${` is an escaped `$`.
VAR_REF = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
BARE_REF = re.compile(r"(?<!\$)\$(?=[A-Za-z_])")  # $VAR: legal, but kept out to make references easy to audit
SECRET_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}")  # a secret has no default value
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/@:]*:(?P<password>[^\s@/]*)@")
# a token of 20+ key-like characters mixing upper case, lower case and digits: a generated secret
SECRET_LOOKING = re.compile(
    r"(?=[A-Za-z0-9+/=_-]*[a-z])(?=[A-Za-z0-9+/=_-]*[A-Z])(?=[A-Za-z0-9+/=_-]*\d)[A-Za-z0-9+/=_-]{20,}"
)

# --- the local stack's Airflow settings that compose sets differently on purpose, and why ------------------------
DELIBERATELY_DIFFERENT = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor: workers scale out with --scale; locally LocalExecutor",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "the postgres service instead of a SQLite file",
    "AIRFLOW__CORE__PARALLELISM": "16 across up to 4 workers of 4 tasks; locally 4 on one small machine",
    "AIRFLOW__CORE__DAGS_FOLDER": "the image's /opt/airflow/dags (set by the Dockerfile)",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "the image's /opt/airflow/plugins (set by the Dockerfile)",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "a volume shared by the workers (writers) and the api-server (reader)",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator-managed users from .env; locally one admin",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "a tmpfs copy of the airflow-passwords secret",
    "AIRFLOW__API_AUTH__JWT_SECRET": "from .env; locally generated into .crispflow/secrets.json",
    "AIRFLOW__API__SECRET_KEY": "from .env; locally generated into .crispflow/secrets.json",
    "AIRFLOW__CORE__FERNET_KEY": "from .env; locally generated into .crispflow/secrets.json",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "the api-server's service name instead of 127.0.0.1",
    "AIRFLOW__API__BASE_URL": "the URL users open, from .env",
    "AIRFLOW__API__HOST": "0.0.0.0 inside the container; the port mapping publishes it on 127.0.0.1",
    "CRISPFLOW_PROJECT_ROOT": "the image's /opt/airflow (set by the Dockerfile)",
    "CRISPFLOW_LAKE_URL": "the lake bucket on MinIO instead of a local folder",
    "CRISPFLOW_PREDICTIONS_URL": "the predictions bucket on MinIO instead of a folder of the local lake",
    "CRISPFLOW_LEDGER_URL": "the ledger database on the postgres service instead of a SQLite file",
    "CRISPFLOW_LEDGER_READ_URL": "the ledger's SELECT-only role on the postgres service instead of the SQLite file",
    "MLFLOW_TRACKING_URI": "the mlflow service",
    "CRISPFLOW_MLFLOW_UI_URL": "the URL users open, from .env",
    "AIRFLOW__OPENLINEAGE__TRANSPORT": "the events file in the logs volume; locally in the stack's home",
    "AIRFLOW_CONN_CRISPFLOW_PSEUDONYMS": "the keys from .env; locally generated into .crispflow/secrets.json",
}
# ... and the local variables that have no meaning in a container.
LOCAL_ONLY = {
    "PATH": "the image's PATH already has its Python environment",
    "AIRFLOW_HOME": "the image's own, /opt/airflow",
    "CRISPFLOW_HOME": "the local stack's state folder",
    "CRISPFLOW_PSEUDONYM_KEYS": "the model server's variable: compose gives it to the model-server service only",
    "CRISPFLOW_AIRFLOW_PORT": "the local stack's port choice",
    "CRISPFLOW_MLFLOW_PORT": "the local stack's port choice",
    "CRISPFLOW_SERVE_PORT": "the local stack's port choice (compose: the model-server service, port 8000)",
}


# --- loading -----------------------------------------------------------------------------------------------------
@functools.cache
def compose() -> dict[str, Any]:
    """docker-compose.yaml as Compose sees it before interpolation (PyYAML resolves anchors and `<<` merges)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yaml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@functools.cache
def env_example() -> dict[str, str]:
    """.env.example as Compose's dotenv reader takes it (quotes removed; no inline comments allowed)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        assert match, f".env.example:{number}: not KEY=value: {raw!r}"
        key, value = match.groups()
        assert key not in values, f".env.example:{number}: {key} defined twice"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            assert " #" not in value and not value.startswith("#"), f".env.example:{number}: inline comment"
        values[key] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, for the forms VAR_REF matches; `$$` becomes `$`."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if (value if op == ":-" else value is not None) else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise AssertionError(f"${{{name}}} is required ({arg}) and .env.example does not set it")
            return value
        if op in (":+", "+"):
            return arg if (value if op == ":+" else value is not None) else ""
        return value or ""

    return VAR_REF.sub(substitute, text).replace("$$", "$")


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    return node


@functools.cache
def resolved() -> dict[str, Any]:
    """The compose model with an unedited copy of .env.example as .env (what `docker compose config` prints)."""
    return resolve(compose(), env_example())


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def is_secret_name(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def command_text(service: dict[str, Any]) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        parts.extend([value] if isinstance(value, str) else value)
    return " ".join(parts)


@functools.cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[key] = value
    return env


# --- the Compose Specification -------------------------------------------------------------------------------------
def test_top_level_keys_follow_the_compose_spec() -> None:
    unknown = {key for key in compose() if key not in TOP_LEVEL_KEYS and not key.startswith("x-")}
    assert not unknown, f"top-level keys outside the Compose Specification: {sorted(unknown)}"
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", compose()["name"]), "project name: lower case, digits, - and _"
    for name, volume in (compose().get("volumes") or {}).items():
        assert set(volume or {}) <= VOLUME_KEYS, f"volume {name}: {set(volume) - VOLUME_KEYS}"
    for kind, allowed in (("secrets", SECRET_KEYS), ("configs", CONFIG_KEYS)):
        for name, item in (compose().get(kind) or {}).items():
            assert set(item) <= allowed, f"{kind}.{name}: unknown keys {set(item) - allowed}"
            sources = {"file", "environment", "content", "external"} & set(item)
            assert len(sources) == 1, f"{kind}.{name}: needs exactly one source, has {sorted(sources)}"


def test_services_follow_the_compose_spec() -> None:
    for name, service in services().items():
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name), f"service name {name!r}"
        unknown = {key for key in service if key not in SERVICE_KEYS and not key.startswith("x-")}
        assert not unknown, f"{name}: keys outside the Compose Specification: {sorted(unknown)}"
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        assert RESTART_POLICY.fullmatch(str(service.get("restart", "no"))), f"{name}: restart policy"
        if "healthcheck" in service:
            check = service["healthcheck"]
            assert set(check) <= HEALTHCHECK_KEYS, f"{name}: healthcheck keys {set(check) - HEALTHCHECK_KEYS}"
            test = check.get("test")
            assert isinstance(test, str) or (test and test[0] in ("CMD", "CMD-SHELL")), f"{name}: healthcheck test"
        for kind in ("secrets", "configs"):
            for ref in service.get(kind, []):
                source = ref if isinstance(ref, str) else ref["source"]
                assert isinstance(ref, str) or set(ref) <= SERVICE_FILE_REF_KEYS, f"{name}.{kind}: {ref}"
                assert source in (compose().get(kind) or {}), f"{name}: {kind} {source!r} is not declared"
        for dependency in service.get("depends_on", {}).values():
            assert set(dependency) <= DEPENDS_ON_KEYS, f"{name}: depends_on keys {set(dependency)}"
            assert dependency["condition"] in CONDITIONS, f"{name}: condition {dependency['condition']!r}"


def test_no_bare_variable_references() -> None:
    for text in strings(compose()):
        assert not BARE_REF.search(text), f"use ${{VAR}} (or $$ for the container's shell): {text[:120]!r}"


# --- topology ----------------------------------------------------------------------------------------------------
def test_required_services_exist() -> None:
    missing = REQUIRED_SERVICES - set(services())
    assert not missing, f"missing services: {sorted(missing)}"


def test_every_image_is_pinned() -> None:
    for name, service in resolved()["services"].items():
        image = service["image"]
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned to a version"


def test_project_image_is_built_from_the_dockerfile_with_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in (*AIRFLOW_SERVICES, "mlflow"):
        service = services()[name]
        assert service["image"] == f"crispflow:{version}", f"{name}: image tag must follow pyproject ({version})"
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, f"{name}: build"


def test_long_running_services_have_healthchecks() -> None:
    for name, service in services().items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", f"{name} is one-shot: restart must be 'no'"
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name}: no healthcheck"
        assert service.get("restart") == "unless-stopped", f"{name}: restart unless-stopped"


def test_depends_on_references_existing_services_with_fitting_conditions() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form with a condition"
        for target, dependency in depends_on.items():
            assert target in services(), f"{name} depends on unknown service {target!r}"
            assert target != name, f"{name} depends on itself"
            condition = dependency["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services()[target], f"{name} waits for {target} to be healthy: no check"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{name} waits for {target} to complete, but it is long-running"
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {target}: wait for completion"
            if "profiles" in services()[target]:
                assert services()[target]["profiles"] == service.get("profiles"), f"{name} -> {target}: profiles"
    for name in AIRFLOW_SERVICES:
        if name != "airflow-init":
            condition = services()[name]["depends_on"]["airflow-init"]["condition"]
            assert condition == "service_completed_successfully", name
        for backend in ("postgres", "redis"):
            assert services()[name]["depends_on"][backend]["condition"] == "service_healthy", f"{name} -> {backend}"


def test_named_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared, used = set(compose().get("volumes") or {}), set()
    for name, service in services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
                volume = {"type": kind, "source": source}
            if volume["type"] == "volume":
                assert volume["source"] in declared, f"{name}: volume {volume['source']!r} is not declared"
                used.add(volume["source"])
            elif volume["type"] == "bind":
                relative = volume["source"].removeprefix("./").rstrip("/")
                assert not Path(relative).is_absolute() and ".." not in relative, f"{name}: bind {relative}"
                if relative in CONFIG_MOUNTS:
                    assert volume.get("bind", {}).get("create_host_path") is False, f"{name}: {relative}"
                    assert volume.get("read_only") is True, f"{name}: {relative} must be read-only"
                assert (ROOT / relative).exists(), f"{name}: bind mount source {relative} does not exist"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


def test_worker_scales() -> None:
    worker = services()["airflow-worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale airflow-worker=N"
    assert not worker.get("ports"), "a published host port prevents --scale airflow-worker=N"
    assert worker.get("scale", 1) >= 1 and "deploy" not in worker


def test_ports_bind_to_loopback_by_default() -> None:
    published = {}
    for name, service in resolved()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.count(":") == 2, f"{name}: use HOST_IP:HOST_PORT:PORT ({port})"
            host_ip, host_port, container_port = port.split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1 by default"
            assert host_port == container_port, f"{name}: {port}"
            published[name] = int(container_port)
    assert published == PUBLISHED_PORTS
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith(("127.0.0.1:", "${CRISPFLOW_BIND_ADDRESS:-127.0.0.1}:")), f"{name}: {port}"


# --- secrets -------------------------------------------------------------------------------------------------------
def test_no_secret_literal_in_any_environment() -> None:
    for name, service in services().items():
        assert "env_file" not in service, f"{name}: env_file would give it every secret; name the variables"
        for key, value in environment(service).items():
            if key.endswith(("_FILE", "_PATH")) and value.startswith("/"):
                continue  # where a secret is, not the secret
            if is_secret_name(key):
                assert SECRET_REF.fullmatch(value), f"{name}: {key} must be ${{VAR}} or ${{VAR:?msg}}, not {value!r}"
            if key.startswith("AIRFLOW_CONN_"):
                conn = json.loads(value)
                assert SECRET_REF.fullmatch(conn.get("password", "${X}")), f"{name}: {key} password literal"


def test_no_secret_literal_anywhere_in_the_compose_file() -> None:
    for text in strings(compose()):
        for match in URL_PASSWORD.finditer(text):
            password = match["password"]
            assert not password or SECRET_REF.fullmatch(password), f"credential in a URL: {text[:100]!r}"
        assert not SECRET_LOOKING.search(text), f"looks like a secret: {SECRET_LOOKING.search(text)[0]!r}"
    raw = COMPOSE_FILE.read_text()
    assert not SECRET_LOOKING.search(raw), "something in docker-compose.yaml (comments included) looks like a secret"


def test_env_example_defines_every_variable_and_no_other() -> None:
    used = {match["name"] for text in strings(compose()) for match in VAR_REF.finditer(text)}
    used |= {
        item["environment"]
        for kind in ("secrets", "configs")
        for item in compose().get(kind, {}).values()
        if "environment" in item
    }
    defined = set(env_example())
    assert not used - defined, f".env.example lacks {sorted(used - defined)}"
    assert not defined - used, f".env.example defines unused {sorted(defined - used)}"
    resolved()  # every ${VAR:?} is satisfied by an unedited copy


def test_env_example_holds_placeholders_not_secrets() -> None:
    for key, value in env_example().items():
        if is_secret_name(key):
            if value.startswith("{"):
                assert set(json.loads(value).values()) == {PLACEHOLDER}, f".env.example: {key} {value}"
            else:
                assert value == PLACEHOLDER, f".env.example: {key} must be {PLACEHOLDER!r}, not {value!r}"
        assert not SECRET_LOOKING.search(value), f".env.example: {key} looks like a real secret"
        assert not URL_PASSWORD.search(value), f".env.example: {key} holds a credential in a URL"


# --- Airflow ---------------------------------------------------------------------------------------------------------
def _secrets_for(name: str) -> set[str]:
    """The secret variables topology.AIRFLOW_SECRETS (and the lake connection's holders) give a compose service."""
    if name == "airflow-init":
        return set(INIT_SECRETS)
    component = AIRFLOW_COMPONENT[name]
    held = {key for key, holders in AIRFLOW_SECRETS.items() if component in holders}
    if component == WORKER:  # compose: the workers' MLflow user is in the mlflow_default connection
        held -= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    return held | ({LAKE_CONNECTION} if component in LAKE_CONNECTION_HOLDERS else set())


def test_airflow_services_share_settings_and_get_only_their_secrets() -> None:
    shared = environment(compose()["x-airflow-common"])
    assert not set(shared) & (set(AIRFLOW_SECRETS) | {LAKE_CONNECTION}), "a secret in every Airflow component"
    reference = services()["airflow-api-server"]
    for name in AIRFLOW_SERVICES:
        service = services()[name]
        env = environment(service)
        assert {key: env[key] for key in shared} == shared, f"{name}: settings differ from the shared ones"
        own = set(env) - set(shared) - SERVICE_ENV_EXTRAS.get(name, set())
        assert own == _secrets_for(name), f"{name}: gets {sorted(own)}, the table says {sorted(_secrets_for(name))}"
        assert service["image"] == reference["image"] and service["volumes"] == reference["volumes"], name
    assert not any(key.startswith("AIRFLOW") for extra in SERVICE_ENV_EXTRAS.values() for key in extra)


def test_workers_get_no_metadata_db_fernet_key_or_jwt_secret() -> None:
    """Airflow 3 task isolation: DAG code runs in the workers and talks to the Execution API only."""
    worker = environment(services()["airflow-worker"])
    assert not [key for key in CONTROL_PLANE_SECRETS if key in worker], "a control-plane secret reaches the workers"
    refs = {match["name"] for value in worker.values() for match in VAR_REF.finditer(value)}
    assert not refs & set(CONTROL_PLANE_ENV_VARS), f"the workers see {sorted(refs & set(CONTROL_PLANE_ENV_VARS))}"
    assert not urlsplit(worker["AIRFLOW__CELERY__RESULT_BACKEND"]).scheme.startswith("db+"), "results in the DB"
    # the ledger: its own role, not the metadata DB's
    ledger = urlsplit(environment(resolved()["services"]["airflow-worker"])["CRISPFLOW_LEDGER_URL"])
    metadata = urlsplit(environment(resolved()["services"]["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert ledger.username != metadata.username
    # the same in the prod-local profile: its workers' environment holds none of these values
    creds = prod_local_creds()
    for process in prod_local_profile().processes:
        if process.name.startswith(WORKER_PREFIX):
            assert not [key for key in CONTROL_PLANE_SECRETS if key in process.env], process.name
            secrets = (creds.fernet_key, creds.jwt_secret, creds.api_secret_key, creds.mlflow_admin_password)
            assert not [v for v in process.env.values() for secret in secrets if secret in v], process.name
            assert process.env["MLFLOW_TRACKING_USERNAME"] == MLFLOW_AIRFLOW_USER


def test_prod_local_gives_each_component_the_secrets_of_the_table() -> None:
    for process in prod_local_profile().processes:
        if not process.name.startswith("airflow-"):
            continue
        component = WORKER if process.name.startswith(WORKER_PREFIX) else process.name.removeprefix("airflow-")
        for key, holders in AIRFLOW_SECRETS.items():
            assert (key in process.env) == (component in holders), f"{process.name}: {key}"
        assert ("AIRFLOW_CONN_CRISPFLOW_S3" in process.env) == (component in LAKE_CONNECTION_HOLDERS), process.name


def test_each_service_has_its_own_mlflow_user_and_only_mlflow_init_the_admin() -> None:
    init = environment(services()["mlflow-init"])
    assert init["MLFLOW_AUTH_ADMIN_PASSWORD"] == environment(services()["mlflow"])["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert set(MLFLOW_PASSWORD_ENV.values()) <= set(init), "mlflow-init sets every service user's password"
    worker = json.loads(environment(services()["airflow-worker"])["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert worker["login"] == MLFLOW_AIRFLOW_USER
    assert worker["password"] == init[MLFLOW_PASSWORD_ENV[MLFLOW_AIRFLOW_USER]]
    serving = environment(services()["model-server"])
    assert serving["MLFLOW_TRACKING_USERNAME"] == MLFLOW_SERVING_USER
    assert serving["MLFLOW_TRACKING_PASSWORD"] == init[MLFLOW_PASSWORD_ENV[MLFLOW_SERVING_USER]]
    for name, service in services().items():
        text = " ".join(strings(service))
        if "MLFLOW_ADMIN_PASSWORD" in text:
            assert name in {"mlflow", "mlflow-init"}, f"{name} holds MLflow's admin password"
    for name in ("airflow-worker", "model-server"):
        assert services()[name]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"
    assert command_text(services()["mlflow-init"]).endswith("crispflow.stack.prod_setup mlflow-users")
    # prod-local: the model server and the workers run as their users, only the setup step holds the admin's
    creds, profile = prod_local_creds(), prod_local_profile()
    processes = {p.name: p for p in profile.processes}
    assert processes["model-server"].env["MLFLOW_TRACKING_USERNAME"] == MLFLOW_SERVING_USER
    holders = {p.name for p in profile.processes if creds.mlflow_admin_password in " ".join(p.env.values())}
    holders |= {s.name for s in profile.setup if creds.mlflow_admin_password in " ".join(s.env.values())}
    assert holders == {"mlflow", "mlflow-users"}


def test_the_api_server_reads_mlflow_the_ledger_and_the_lake_as_read_only_users() -> None:
    """The crispflow UI plugin runs in the api-server: it reads MLflow, the ledger and the lake, as users that may
    not write (its actions are DAG runs, carried out by the workers)."""
    api, example = environment(services()["airflow-api-server"]), env_example()
    # MLflow: the topology's user for the api-server, which prod_setup grants nothing beyond READ
    ui_user = MLFLOW_USER_OF[API_SERVER]
    assert ui_user not in (MLFLOW_AIRFLOW_USER, MLFLOW_SERVING_USER) and MLFLOW_USERS[ui_user] == ()
    assert api["MLFLOW_TRACKING_USERNAME"] == ui_user
    assert api["MLFLOW_TRACKING_PASSWORD"] == environment(services()["mlflow-init"])[MLFLOW_PASSWORD_ENV[ui_user]]
    # the ledger: the same database as the workers', as the role postgres-init creates with the grants setup runs
    resolved_api = environment(resolved()["services"]["airflow-api-server"])
    reader = urlsplit(resolved_api["CRISPFLOW_LEDGER_READ_URL"])
    writer = urlsplit(environment(resolved()["services"]["airflow-worker"])["CRISPFLOW_LEDGER_URL"])
    assert (reader.hostname, reader.port, reader.path) == (writer.hostname, writer.port, writer.path)
    assert reader.username == "ledger_reader" != writer.username
    assert reader.password == example["LEDGER_READER_DB_PASSWORD"]
    script = compose()["configs"]["postgres-init"]["content"]
    assert "CREATE ROLE ledger_reader LOGIN PASSWORD :'ledger_reader_password';" in script
    assert 'ledger_reader_password="$$LEDGER_READER_DB_PASSWORD"' in script
    assert "LEDGER_READER_DB_PASSWORD" in environment(services()["postgres"])
    database, owner = writer.path.lstrip("/"), writer.username
    for statement in LEDGER_READER_GRANTS:
        sql = statement.format(db=database, reader=reader.username, owner=owner) + ";"
        assert sql in script, f"postgres-init does not run: {sql}"
    assert script.index(f"\\connect {database}") < script.index("ALTER DEFAULT PRIVILEGES")
    # the lake: the api-server's connection is the MinIO user whose only policy lists and reads both buckets
    for name, component in AIRFLOW_COMPONENT.items():
        if component in LAKE_READERS:
            conn = json.loads(environment(resolved()["services"][name])[LAKE_CONNECTION])
            assert (conn["login"], conn["password"]) == (example["LAKE_READER_S3_USER"],
                                                         example["LAKE_READER_S3_PASSWORD"]), name
    assert example["LAKE_READER_S3_USER"] != example["LAKE_S3_USER"]
    init = command_text(resolved()["services"]["minio-init"])
    (policy,) = [line for line in init.splitlines() if "/tmp/lake-read.json" in line and "printf" in line]
    actions = set(re.findall(r"s3:\w+", policy))
    assert actions == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}, actions
    # four resources (bucket, objects) filled in with the lake's and the prediction log's bucket, no other
    assert policy.count('"arn:aws:s3:::%s') == 4 and policy.count("arn:aws:s3:::") == 4
    filled = '"$LAKE_BUCKET" "$LAKE_BUCKET" "$PREDICTIONS_BUCKET" "$PREDICTIONS_BUCKET" > /tmp/lake-read.json'
    assert policy.endswith("' " + filled)
    assert 'policy attach local lake-read --user "$LAKE_READER_S3_USER"' in init
    assert not [line for line in init.splitlines() if "LAKE_READER_S3_USER" in line and "-rw" in line]


def test_prod_local_gives_the_api_server_its_read_only_users() -> None:
    creds, profile = prod_local_creds(), prod_local_profile()
    processes = {p.name: p for p in profile.processes}
    for process in profile.processes:
        if process.name.startswith("airflow-"):
            component = WORKER if process.name.startswith(WORKER_PREFIX) else process.name.removeprefix("airflow-")
            assert process.env.get("MLFLOW_TRACKING_USERNAME") == MLFLOW_USER_OF.get(component), process.name
            assert process.env["CRISPFLOW_MLFLOW_UI_URL"] == profile.mlflow_url, process.name
    api = processes["airflow-api-server"]
    assert api.env["MLFLOW_TRACKING_PASSWORD"] == creds.mlflow_ui_password
    reader = urlsplit(api.env["CRISPFLOW_LEDGER_READ_URL"])
    writer = urlsplit(processes["airflow-worker-1"].env["CRISPFLOW_LEDGER_URL"])
    assert (reader.hostname, reader.port, reader.path) == (writer.hostname, writer.port, writer.path)
    assert reader.username != writer.username and reader.username.endswith("_ledger_reader")
    step = profile.step("ledger-reader")
    assert "ledger-reader" in api.needs and step.argv[-2:] == (writer.path.lstrip("/"), reader.username)
    holders = {p.name for p in profile.processes if creds.ledger_reader_password in " ".join(p.env.values())}
    holders |= {s.name for s in profile.setup if creds.ledger_reader_password in " ".join(s.env.values())}
    assert holders == {"airflow-api-server", "ledger-reader"}
    assert not any(creds.ledger_reader_password in arg for s in profile.setup for arg in s.argv)


def test_every_airflow_setting_exists_in_the_installed_airflow() -> None:
    known = airflow_config_options()
    keys = {key for service in services().values() for key in environment(service)} | set(dockerfile_env())
    for key in sorted(k for k in keys if k.startswith("AIRFLOW__")):
        match = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
        assert match, f"{key}: not AIRFLOW__SECTION__KEY"
        section, option = match[1].lower(), match[2].lower()
        assert (section, option) in known, f"{key}: Airflow has no [{section}] {option}"


def effective_airflow_env() -> dict[str, str]:
    """What the Airflow containers see together: the image's ENV, then each Airflow service's environment
    (unedited .env.example). They agree on every key they share (test_airflow_services_share_settings_...)."""
    merged = dockerfile_env()
    for name in AIRFLOW_COMPONENT:
        merged |= environment(resolved()["services"][name])
    return merged


def local_airflow_env(tmp_path: Path) -> dict[str, str]:
    settings = Settings(
        project_root=tmp_path,
        home=tmp_path / ".crispflow",
        pipelines_dir=tmp_path / "include" / "pipelines",
        lake_url=(tmp_path / "lake").as_uri(),
        lake_conn_id=None,
        mlflow_tracking_uri="http://127.0.0.1:5000",
        predictions_url=(tmp_path / "lake" / "predictions").as_uri(),
        serve_port=8000,
        ledger_url=f"sqlite:///{tmp_path / '.crispflow' / 'ledger.db'}",
        model_cache=tmp_path / ".crispflow" / "cache" / "models",
    )
    return airflow_env(settings, Ports(), Secrets("admin-pw", "jwt", "api-key", "fernet"))


def test_same_airflow_behaviour_as_the_local_stack(tmp_path: Path) -> None:
    local, production = local_airflow_env(tmp_path), effective_airflow_env()
    stale = (set(DELIBERATELY_DIFFERENT) | set(LOCAL_ONLY)) - set(local)
    assert not stale, f"allow-list entries the local profile no longer sets: {sorted(stale)}"
    for key, value in local.items():
        if key in LOCAL_ONLY:
            assert key not in environment(services()["airflow-api-server"]), f"{key}: {LOCAL_ONLY[key]}"
        elif key in DELIBERATELY_DIFFERENT:
            assert key in production, f"{key} must be set in compose ({DELIBERATELY_DIFFERENT[key]})"
        else:
            assert production.get(key) == value, f"{key}: compose {production.get(key)!r}, local {value!r}"


def test_airflow_auth_is_real() -> None:
    env = environment(services()["airflow-api-server"])
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == SIMPLE_AUTH_MANAGER
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert SECRET_REF.fullmatch(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]), "users come from .env"
    users = dict(user.split(":")[:2] for user in env_example()["AIRFLOW_USERS"].split(","))
    assert "admin" in users.values(), ".env.example: AIRFLOW_USERS needs an admin"
    assert set(json.loads(env_example()["AIRFLOW_USER_PASSWORDS"])) == set(users), "a password per user"
    # the passwords file: a secret, copied by the api-server to a writable tmpfs (Airflow opens it read-write)
    passwords_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    api = services()["airflow-api-server"]
    assert "airflow-passwords" in api["secrets"] and "airflow-passwords" in services()["airflow-init"]["secrets"]
    assert any(passwords_file.startswith(mount.split(":")[0] + "/") for mount in api["tmpfs"])
    assert "/run/secrets/airflow-passwords" in command_text(api) and "api-server" in command_text(api)
    assert compose()["secrets"]["airflow-passwords"] == {"environment": "AIRFLOW_USER_PASSWORDS"}
    init = command_text(services()["airflow-init"])
    assert "airflow db migrate" in init and "/run/secrets/airflow-passwords" in init


def test_airflow_talks_to_the_api_server_minio_and_mlflow_by_service_name() -> None:
    env, example = effective_airflow_env(), env_example()
    api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (api.hostname, api.port, api.path) == ("airflow-api-server", 8080, "/execution/")
    assert env["AIRFLOW__API__PORT"] == "8080"
    assert env["CRISPFLOW_LAKE_URL"] == f"s3://{example['LAKE_BUCKET']}/lake"
    lake = json.loads(env[f"AIRFLOW_CONN_{env['CRISPFLOW_LAKE_CONN_ID'].upper()}"])
    assert lake["conn_type"] == "aws" and lake["extra"]["endpoint_url"] == "http://minio:9000"
    assert (lake["login"], lake["password"]) == (example["LAKE_S3_USER"], example["LAKE_S3_PASSWORD"])
    mlflow = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])  # read by MlflowHook: scheme from `schema`
    assert (mlflow["conn_type"], mlflow["host"], mlflow["port"], mlflow["schema"]) == ("http", "mlflow", 5000, "http")
    server = environment(services()["mlflow"])
    raw = json.loads(environment(services()["airflow-worker"])["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert raw["login"] == MLFLOW_AIRFLOW_USER != server["MLFLOW_AUTH_ADMIN_USERNAME"], "never the admin"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert broker.password == example["REDIS_PASSWORD"], "the broker needs Redis's password"


def test_postgres_creates_the_databases_airflow_and_mlflow_use() -> None:
    script = compose()["configs"]["postgres-init"]["content"]
    created = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", script))
    airflow = urlsplit(environment(resolved()["services"]["airflow-api-server"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    mlflow = urlsplit(environment(resolved()["services"]["mlflow"])["MLFLOW_BACKEND_STORE_URI"])
    for url in (airflow, mlflow):
        assert url.hostname == "postgres" and url.port == 5432
        assert created.get(url.path.lstrip("/")) == url.username, f"{url.path}: not created for {url.username}"
    targets = {ref["target"] for ref in services()["postgres"]["configs"]}
    assert any(target.startswith("/docker-entrypoint-initdb.d/") for target in targets)


# --- MLflow -----------------------------------------------------------------------------------------------------------
def test_mlflow_runs_with_basic_auth_postgres_and_proxied_s3_artifacts() -> None:
    service = services()["mlflow"]
    argv = service["command"]
    assert argv[:2] == ["mlflow", "server"]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    apps = {entry.name for entry in importlib.metadata.entry_points(group="mlflow.app")}
    assert "basic-auth" in apps, f"the installed MLflow offers --app-name {sorted(apps)}"
    mlflow = package_dir("mlflow")  # the CLI's options and environment variables, read from its source
    source = "\n".join((mlflow / name).read_text() for name in MLFLOW_CLI_SOURCES)
    unknown_flags = [arg for arg in argv if arg.startswith("--") and f'"{arg}"' not in source]
    assert not unknown_flags, f"flags the installed `mlflow server` does not define: {unknown_flags}"
    bucket = resolved()["services"]["mlflow"]["command"][argv.index("--artifacts-destination") + 1]
    assert bucket == f"s3://{env_example()['MLFLOW_ARTIFACTS_BUCKET']}/"
    env = environment(service)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert SECRET_REF.fullmatch(env[key]), key
    known = set(re.findall(r"\b(MLFLOW_[A-Z0-9_]+)\b", source))
    unknown = {key for key in env if key.startswith("MLFLOW_") and key not in known}
    assert not unknown, f"variables the installed MLflow does not read: {sorted(unknown)}"


def test_mlflow_auth_config_is_valid() -> None:
    service = services()["mlflow"]
    target = environment(service)["MLFLOW_AUTH_CONFIG_PATH"]
    (ref,) = [ref for ref in service["configs"] if ref["target"] == target]
    content = resolved()["configs"][ref["source"]]["content"]
    parser = configparser.ConfigParser()  # MLflow's reader: `%` would break it (hence hex passwords)
    parser.read_string(content)
    settings = {key: parser.get("mlflow", key) for key in parser["mlflow"]}
    shipped = (package_dir("mlflow") / "server" / "auth" / "basic_auth.ini").read_text()
    known = set(re.findall(r"^#?\s*(\w+)\s*=", shipped, flags=re.MULTILINE))
    assert set(settings) <= known, f"unknown auth settings {set(settings) - known}"
    assert settings["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert settings["database_uri"].startswith("postgresql://"), "users must live in PostgreSQL, not a local file"
    assert "admin_password" not in settings, "the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD"
    local = configparser.ConfigParser()
    local.read_string(AUTH_CONFIG.format(database_uri="postgresql://prod-local"))
    same = {key: value for key, value in settings.items() if key != "database_uri"}
    assert {key: value for key, value in local["mlflow"].items() if key != "database_uri"} == same, "prod-local differs"


def test_airflow_init_creates_every_pool_the_dags_use() -> None:
    script = "\n".join(services()["airflow-init"]["command"])
    for name, slots, description in POOLS:
        assert f'airflow pools set {name} {slots} "{description}"' in script, f"pool {name} is not created"


def test_minio_init_creates_both_buckets() -> None:
    env = environment(services()["minio-init"])
    script = command_text(services()["minio-init"])
    assert env["LAKE_BUCKET"] == "${LAKE_BUCKET:-crispflow-lake}" and "$$LAKE_BUCKET" in script
    assert env["MLFLOW_ARTIFACTS_BUCKET"] == "${MLFLOW_ARTIFACTS_BUCKET:-mlflow-artifacts}"
    assert "mc mb --ignore-existing" in script and "$$MLFLOW_ARTIFACTS_BUCKET" in script
    assert env["PREDICTIONS_BUCKET"] == "${PREDICTIONS_BUCKET:-crispflow-predictions}"
    assert 'grant "$$PREDICTIONS_BUCKET"' in script
    for name in ("airflow-worker", "mlflow", "model-server"):
        assert services()[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


# --- Dockerfile -------------------------------------------------------------------------------------------------------
def test_dockerfile_is_pinned_and_installs_the_lock_then_the_project() -> None:
    instructions = dockerfile_instructions()
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    version = importlib.metadata.version("apache-airflow")
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert froms == [f"apache/airflow:{version}-{python}"], f"FROM must pin Airflow {version} on {python}"
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(rf"^apache-airflow=={re.escape(version)}$", lock, flags=re.MULTILINE), "the lock's Airflow"
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    lock_install = next(
        i for i, run in enumerate(runs) if re.search(r"pip install --no-cache-dir -r \S*requirements\.lock", run)
    )
    project_install = next(i for i, run in enumerate(runs) if "pip install --no-cache-dir --no-deps ." in run)
    assert lock_install < project_install, "dependencies first (cached layer), then the project"
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] == "airflow", "the image must run as the airflow user"
    copied = " ".join(args for instruction, args in instructions if instruction == "COPY")
    for source in ("requirements.lock", "pyproject.toml", "include/", "plugins/", "dags/"):
        assert source in copied, f"the Dockerfile does not copy {source}"
    env = dockerfile_env()
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/airflow/plugins"


def test_dockerfile_and_dockerignore_hold_no_secrets() -> None:
    for instruction, args in dockerfile_instructions():
        if instruction in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or args.split()[:1]
            assert not any(is_secret_name(name) for name in names), f"{instruction} {args}: secrets at build time"
    text = DOCKERFILE.read_text()
    assert not SECRET_LOOKING.search(text) and not URL_PASSWORD.search(text)
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"}
    for required in (".venv", ".crispflow", ".git", ".env", "**/__pycache__"):
        assert required in ignored, f".dockerignore must exclude {required}"
    for needed in ("requirements.lock", "pyproject.toml", "README.md", "include", "plugins", "dags"):
        assert not {needed, needed + "/", "*"} & ignored, f".dockerignore excludes {needed}, which the build copies"


@pytest.mark.parametrize("path", [COMPOSE_FILE, DOCKERFILE, ENV_EXAMPLE, DOCKERIGNORE])
def test_files_end_with_a_newline_and_have_no_tabs(path: Path) -> None:
    text = path.read_text()
    assert text.endswith("\n") and "\t" not in text, path.name


# --- the Compose Specification's JSON schema; `docker compose config` where a compose binary exists ------------------
@pytest.mark.parametrize("stage", ["as written", "interpolated with .env.example"])
def test_compose_file_validates_against_the_compose_spec_schema(stage: str) -> None:
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    document = compose() if stage == "as written" else resolved()
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:10])


def _compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) or a standalone v2 `docker-compose`; None without one (no v1: it predates
    the Compose Specification features this file uses)."""
    import shutil

    candidates = [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if not shutil.which(command[0]):
            continue
        probe = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and re.match(r"v?2\.", probe.stdout.strip()):
            return command
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no Compose v2 binary (docker compose / docker-compose v2): the schema test validates instead")
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- the same processes as the prod-local profile (crispflow up --profile prod-local) -------------------------------
# Settings the prod-local profile and compose set differently on purpose, and why.
PROD_LOCAL_ONLY = {
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "a queue per home: several prod-local stacks share one Redis",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": "a key prefix per home, for the same reason",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "explicit (6 h); compose keeps Airflow's 24 h",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "off: port 8974 would collide between stacks on one machine",
    "AIRFLOW_CONN_CRISPFLOW_S3": "the lake connection is named crispflow_lake in compose (MinIO, its own user)",
    "CRISPFLOW_S3_PORT": "the moto server's port",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "prod-local's workers share one host: each names itself worker<n>",
    "CRISPFLOW_WORKER_NAME": "prod-local's workers share one host: each names itself worker<n>",
    "OTEL_EXPORTER_OTLP_HEADERS": "prod-local's OTLP receiver is the telemetry bridge (bearer token); compose's "
                                  "Prometheus receives OTLP itself, on the compose network",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta: the bridge adds up the pushes of every Airflow "
                                                         "process; Prometheus 3's receiver takes cumulative",
}
COMPOSE_ONLY = {
    "AIRFLOW__CELERY__BROKER_URL": "present in both; compare only its scheme (Redis with a password in compose)",
    "AIRFLOW_CONN_CRISPFLOW_LAKE": "the lake connection (prod-local: AIRFLOW_CONN_CRISPFLOW_S3)",
    "AIRFLOW__METRICS__OTEL_ON": "metrics to Prometheus; prod-local runs no Prometheus",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "metrics to Prometheus; prod-local runs no Prometheus",
    "OTEL_SERVICE_NAME": "metrics to Prometheus; prod-local runs no Prometheus",
    "OTEL_METRIC_EXPORT_INTERVAL": "metrics to Prometheus; prod-local runs no Prometheus",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "present in both (a volume in compose)",
    "AIRFLOW__CORE__DAGS_FOLDER": "set by the Dockerfile",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "set by the Dockerfile",
    "CRISPFLOW_PROJECT_ROOT": "set by the Dockerfile",
    "DUMB_INIT_SETSID": "the worker container's signal handling (dumb-init); prod-local stops process groups",
}
# compose service -> prod-local process (the worker: its first instance; compose scales one service instead)
SAME_PROCESS = {
    "airflow-api-server": "airflow-api-server",
    "airflow-scheduler": "airflow-scheduler",
    "airflow-dag-processor": "airflow-dag-processor",
    "airflow-triggerer": "airflow-triggerer",
    "airflow-worker": "airflow-worker-1",
    "mlflow": "mlflow",
    "model-server": "model-server",
}
# flags whose values differ by design: addresses, ports, URLs, per-stack names, process counts
VALUE_FLAGS = {
    "--host",
    "--port",
    "--workers",
    "--tracking-uri",
    "--predictions-url",
    "--artifacts-destination",
    "--celery-hostname",
    "--queues",
    "--concurrency",
}


@functools.cache
def prod_local_creds() -> Secrets:
    return Secrets.generate()


@functools.cache
def prod_local_profile() -> Any:
    from crispflow.stack.profiles import PROD_LOCAL, build_profile

    return build_profile(PROD_LOCAL, Settings.from_env(), Ports(), prod_local_creds())


def prod_local_airflow_env() -> dict[str, str]:
    """The prod-local Airflow processes' environments together (each holds only its own secrets)."""
    merged: dict[str, str] = {}
    for process in prod_local_profile().processes:
        if process.name.startswith("airflow-"):
            merged |= process.env
    return merged


def _words(argv: list[str] | tuple[str, ...]) -> tuple[list[str], set[str]]:
    """(the words before the first flag, the flags) of a command line, program path and `--x=y` values dropped."""
    words, flags, seen_flag = [], set(), False
    for arg in argv:
        if arg.startswith("-"):
            seen_flag = True
            flags.add(arg.split("=", 1)[0])
        elif not seen_flag:
            words.append(Path(arg).name)
    return words, flags


def compose_argv(name: str) -> list[str]:
    """What the container runs, as the prod-local argv would write it: the image's entrypoint runs `airflow`."""
    service = resolved()["services"][name]
    command = service.get("command") or []
    command = [command] if isinstance(command, str) else list(command)
    if name == "airflow-api-server":  # a shell line that ends in `exec /entrypoint airflow api-server`
        return command[0].split("exec /entrypoint ", 1)[1].split()
    if name in AIRFLOW_SERVICES:
        return ["airflow", *command]
    return command


# Flags only compose passes, and why: prod-local's `up` writes the model server's token file itself (hashes of the
# tokens in .crispflow/secrets.json) and names it in $CRISPFLOW_SERVE_TOKENS_FILE; compose fills a tmpfs file from
# its Docker secrets at start.
COMPOSE_ONLY_FLAGS = {"model-server": {"--tokens-file", "--secret-token"}}


@pytest.mark.parametrize("service", sorted(SAME_PROCESS))
def test_each_service_runs_the_command_prod_local_runs(service: str) -> None:
    process = {p.name: p for p in prod_local_profile().processes}[SAME_PROCESS[service]]
    compose_words, compose_flags = _words(compose_argv(service))
    local_words, local_flags = _words(process.argv)
    assert compose_words == local_words, f"{service}: compose runs {compose_words}, prod-local {local_words}"
    compose_flags -= COMPOSE_ONLY_FLAGS.get(service, set())
    assert compose_flags - VALUE_FLAGS == local_flags - VALUE_FLAGS, f"{service}: flags differ"


def test_published_ports_are_the_prod_local_defaults() -> None:
    processes = {p.name: p for p in prod_local_profile().processes}
    for service, port in PUBLISHED_PORTS.items():
        if service in SAME_PROCESS:
            assert processes[SAME_PROCESS[service]].port == port, f"{service}: prod-local default port differs"


def test_airflow_environment_matches_prod_local() -> None:
    local = prod_local_airflow_env()
    production = effective_airflow_env()
    assert production["AIRFLOW__CORE__EXECUTOR"] == local["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    keys = ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    for key in (*keys, "CRISPFLOW_LEDGER_URL"):
        assert urlsplit(production[key]).scheme == urlsplit(local[key]).scheme, key
    for key in ("CRISPFLOW_LAKE_URL", "CRISPFLOW_PREDICTIONS_URL"):
        assert urlsplit(production[key]).scheme == urlsplit(local[key]).scheme == "s3", key
        assert urlsplit(production[key]).path == urlsplit(local[key]).path, f"{key}: same layout in the bucket"
    local_keys = set(local) - set(LOCAL_ONLY)
    missing = local_keys - set(production) - set(PROD_LOCAL_ONLY)
    extra = set(effective_airflow_env()) - set(dockerfile_env()) - local_keys - set(COMPOSE_ONLY)
    assert not missing, f"prod-local sets, compose does not: {sorted(missing)}"
    assert not extra, f"compose sets, prod-local does not: {sorted(extra)}"
    stale = (set(PROD_LOCAL_ONLY) - local_keys) | {k for k in COMPOSE_ONLY if k not in production}
    assert not stale, f"allow-list entries that no longer apply: {sorted(stale)}"


@pytest.mark.parametrize("service", ["mlflow", "model-server"])
def test_server_environment_matches_prod_local(service: str) -> None:
    local = set({p.name: p for p in prod_local_profile().processes}[SAME_PROCESS[service]].env)
    local = {key for key in local
             if not key.startswith("CRISPFLOW_") or key in ("CRISPFLOW_PREDICTIONS_URL", "CRISPFLOW_PSEUDONYM_KEYS")}
    local -= {"PATH"}
    production = set(environment(services()[service]))
    # the model server: compose names its port; prod-local passes it on the command line only
    assert local - production == set(), f"{service}: prod-local sets {sorted(local - production)}, compose not"
    assert production - local <= {"CRISPFLOW_SERVE_PORT", "AWS_DEFAULT_REGION", "MLFLOW_SERVER_ALLOWED_HOSTS"}, (
        f"{service}: compose sets {sorted(production - local)}, prod-local not"
    )


def test_monitoring_is_provisioned() -> None:
    prometheus = yaml.safe_load((ROOT / "include" / "monitoring" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert "model-server:8000" in targets
    assert "--web.enable-otlp-receiver" in services()["prometheus"]["command"]
    otlp = urlsplit(effective_airflow_env()["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"])
    assert (otlp.hostname, otlp.port, otlp.path) == ("prometheus", 9090, "/api/v1/otlp/v1/metrics")
    assert effective_airflow_env()["AIRFLOW__METRICS__OTEL_ON"] == "True"
    grafana = ROOT / "include" / "monitoring" / "grafana"
    datasource = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "dashboards" / "dashboards.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    dashboards = [json.loads(path.read_text()) for path in (grafana / "dashboards").glob("*.json")]
    assert dashboards, "no dashboard to provision"
    exprs = " ".join(t["expr"] for d in dashboards for panel in d["panels"] for t in panel["targets"])
    for metric in ("crispflow_serve_requests_total", "crispflow_serve_request_latency_seconds_bucket", "airflow_"):
        assert metric in exprs, f"no panel shows {metric}"
    for dashboard in dashboards:
        assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {datasource["uid"]}
