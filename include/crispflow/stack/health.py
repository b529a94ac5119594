"""Can the stack start, is it healthy: free ports before `up`, health endpoints after."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import requests

from crispflow.stack.errors import StackError
from crispflow.stack.ports import port_in_use
from crispflow.stack.topology import ProcessSpec

HEALTH_TIMEOUT = 10.0  # on SQLite the api-server can stall for seconds behind a locked write


def check_ports(specs: Iterable[ProcessSpec]) -> None:
    """Fail with a clear message if a port a process is about to bind is taken."""
    for spec in specs:
        if spec.port is not None and port_in_use(spec.port):
            hint = f"set {spec.port_env} to another port or " if spec.port_env else ""
            raise StackError(f"port {spec.port} ({spec.label}) is already in use; {hint}stop what is using it")


def health_problem(spec: ProcessSpec, cache: dict[str, Any], since: datetime | None = None) -> str | None:
    """One health check: None when healthy, else why not. `cache` shares a response between processes
    reporting on the same URL.

    With `since`, a component's `latest_<key>_heartbeat` must be newer: a heartbeat left in the database
    by a previous run of the stack does not count.
    """
    if spec.health_url is None:
        return None
    if spec.health_url not in cache:
        cache[spec.health_url] = _fetch_health(spec.health_url, spec.health_headers)
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


def _fetch_health(url: str, headers: Mapping[str, str] | None = None) -> Any:
    """The health endpoint's JSON body ({} if not JSON) when it answers 200, else a description (str)."""
    try:
        resp = requests.get(url, timeout=HEALTH_TIMEOUT, headers=dict(headers or {}))
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
