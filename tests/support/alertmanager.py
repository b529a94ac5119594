"""A real Alertmanager (Debian's prometheus-alertmanager) on a free loopback port, with basic auth."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from crispflow.stack.monitoring import web_config

ALERTMANAGER_BINARIES = ("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")


@dataclass(frozen=True)
class Alertmanager:
    """A running Alertmanager: its URL and the one basic-auth user it accepts."""

    url: str
    user: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API v2 as that user (for arranging and checking); raises on an HTTP error."""
        response = requests.request(method, f"{self.url}/api/v2/{path.lstrip('/')}", auth=self.auth, timeout=10,
                                    **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def http_conn(self) -> str:
        """An Airflow http connection (JSON for `AIRFLOW_CONN_<ID>`) with this server and its credentials."""
        host, port = self.url.removeprefix("http://").split(":")
        return json.dumps({"conn_type": "http", "host": host, "port": int(port), "schema": "http",
                           "login": self.user, "password": self.password})


def _alertmanager_binary() -> str | None:
    return next((found for name in ALERTMANAGER_BINARIES if (found := shutil.which(name))), None)


@contextlib.contextmanager
def run_alertmanager(workdir: Path, timeout_s: float = 60.0) -> Iterator[Alertmanager]:
    """Start Alertmanager (a null receiver, storage in `workdir`, basic auth, no cluster) on a free loopback port;
    wait until /-/ready answers; stop it on exit."""
    from support.servers import free_port, stop_process

    binary = _alertmanager_binary()
    if binary is None:
        raise RuntimeError("prometheus-alertmanager is not installed: `make monitoring-tools`")
    user, password = "crispflow", secrets.token_urlsafe(16)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    (workdir / "web.yml").write_text(yaml.safe_dump(web_config({user: password})))  # as prod-local writes it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={workdir / 'web.yml'}",
             "--cluster.listen-address=", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"alertmanager did not become ready on {url} (exit {proc.poll()}):\n{tail}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/-/ready", auth=(user, password), timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            yield Alertmanager(url, user, password)
        finally:
            stop_process(proc)
