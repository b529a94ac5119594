"""Real services on loopback for integration tests: a moto S3 server, an HTTP JSON server, a scratch PostgreSQL DB.

Each service is a context manager (usable outside pytest too) wrapped by a pytest fixture:

- `moto_s3` (session): `moto_server` as a subprocess on a free port. One per session on purpose: Airflow caches
  the filesystem of an `ObjectStoragePath` per (protocol, conn_id) for the life of the process, so a second
  server on another port would not be seen through a conn id that was already used.
- `http_json_server` (function): a threaded `http.server` whose routes the test registers.
- `postgres_db` (module): a database with a unique name on the local PostgreSQL, dropped (with FORCE) after.

Connection JSON for `AIRFLOW_CONN_<ID>` comes from each handle (`aws_conn`, `http_conn`, `postgres_conn`): set it
with `monkeypatch.setenv`, no metadata DB needed. Use the fixtures with `pytest_plugins = ["support.servers"]`.

PYTEST_DONT_REWRITE: no asserts here, and test modules import it before pytest registers it as a plugin.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on the port; fail early if `proc` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on port {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} within {timeout_s} s")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Terminate a child we started, then kill it if it does not exit in time; always reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)


# --- S3 (moto) --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotoS3:
    """A running moto server. Any access key works; the region is us-east-1."""

    port: int
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client for arranging and checking objects directly."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id="test", aws_secret_access_key="test")

    def aws_conn(self) -> str:
        """An Airflow aws connection (JSON for `AIRFLOW_CONN_<ID>`) pointing at this server."""
        return json.dumps({"conn_type": "aws", "login": "test", "password": "test",
                           "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region}})

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST"),
                               timeout=10).close()


def _moto_executable() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    return found


@contextlib.contextmanager
def run_moto_server(timeout_s: float = 60.0) -> Iterator[MotoS3]:
    """Start `moto_server -H 127.0.0.1 -p <free port>`, wait until it listens, stop it on exit."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([_moto_executable(), "-H", LOOPBACK, "-p", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port(port, timeout_s, proc)
            except (RuntimeError, TimeoutError) as exc:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"moto_server did not start: {exc}\n{tail}") from exc
            yield MotoS3(port)
        finally:
            stop_process(proc)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the whole session (see the module docstring for why not more)."""
    with run_moto_server() as server:
        yield server


# --- HTTP JSON ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a route handler sees of a GET: the path and the query (one value per name)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, doc: Any, status: int = 200, etag: bool = True) -> Reply:
        """A JSON answer; with `etag`, a strong ETag of the body (like most APIs send)."""
        body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"}
        if etag:
            headers["ETag"] = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        return cls(status, body, headers)


Route = Callable[[Request], Reply]


class JsonHttpServer:
    """A loopback HTTP server in a thread. Register `route(path, handler)`; every request and reply is logged."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[tuple[Request, Reply]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"http-{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def route(self, path: str, handler: Route) -> None:
        self.routes[path] = handler

    def http_conn(self) -> str:
        """An Airflow http connection (JSON for `AIRFLOW_CONN_<ID>`) whose base URL is this server."""
        return json.dumps({"conn_type": "http", "host": LOOPBACK, "port": self.port, "schema": "http"})

    def replies(self, path: str | None = None) -> list[tuple[Request, Reply]]:
        with self._lock:
            return [(q, r) for q, r in self.log if path is None or q.path == path]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        request = Request(parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}, dict(handler.headers))
        route = self.routes.get(parts.path)
        try:
            reply = route(request) if route else Reply(404, b'{"error": "no such route"}')
        except Exception as exc:  # a bug in the test's handler: answer 599 so the test sees it
            reply = Reply(599, f"handler error: {type(exc).__name__}: {exc}".encode())
        with self._lock:
            self.log.append((request, reply))
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        handler.wfile.write(reply.body)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


@contextlib.contextmanager
def run_http_server() -> Iterator[JsonHttpServer]:
    server = JsonHttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_json_server() -> Iterator[JsonHttpServer]:
    """A fresh loopback HTTP server per test (starting one takes milliseconds)."""
    with run_http_server() as server:
        yield server


# --- PostgreSQL --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScratchDatabase:
    """A throw-away database on the local PostgreSQL (trust auth by default)."""

    name: str
    host: str
    port: int
    user: str
    password: str = ""

    @property
    def sqlalchemy_url(self) -> str:
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{self.name}"

    def postgres_conn(self) -> str:
        """An Airflow postgres connection (JSON for `AIRFLOW_CONN_<ID>`) to this database."""
        conn: dict[str, Any] = {"conn_type": "postgres", "host": self.host, "port": self.port,
                                "login": self.user, "schema": self.name}
        if self.password:
            conn["password"] = self.password
        return json.dumps(conn)

    def admin_execute(self, sql: str) -> None:
        """Run one statement on the maintenance DB, outside a transaction (ALTER/CREATE/DROP DATABASE)."""
        with contextlib.closing(_admin_connection(self.host, self.port, self.user, self.password)) as conn:
            conn.cursor().execute(sql)


def _admin_connection(host: str, port: int, user: str, password: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(host=host, port=port, user=user, password=password or None, dbname="postgres",
                            connect_timeout=5)
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def scratch_database(prefix: str = "crispflow_test") -> Iterator[ScratchDatabase]:
    """CREATE DATABASE <prefix>_<random>; DROP ... WITH (FORCE) on exit, even if connections are still open.

    Server and role come from CRISPFLOW_TEST_PG_HOST / _PORT / _USER / _PASSWORD (default 127.0.0.1:5432,
    postgres, no password).
    """
    db = ScratchDatabase(name=f"{prefix}_{uuid.uuid4().hex[:12]}",
                         host=os.environ.get("CRISPFLOW_TEST_PG_HOST", LOOPBACK),
                         port=int(os.environ.get("CRISPFLOW_TEST_PG_PORT", "5432")),
                         user=os.environ.get("CRISPFLOW_TEST_PG_USER", "postgres"),
                         password=os.environ.get("CRISPFLOW_TEST_PG_PASSWORD", ""))
    db.admin_execute(f'CREATE DATABASE "{db.name}"')
    try:
        yield db
    finally:
        db.admin_execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[ScratchDatabase]:
    """A scratch database per test module, dropped afterwards."""
    with scratch_database() as db:
        yield db
