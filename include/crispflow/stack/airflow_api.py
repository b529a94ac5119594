"""A small client for Airflow 3's REST API (/api/v2), with JWT auth from SimpleAuthManager's /auth/token.

Connection errors, timeouts and 5xx answers are retried a bounded number of times; any other error raises
`AirflowAPIError` carrying the status code and the response body.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from crispflow.errors import CrispflowError
from crispflow.settings import Settings
from crispflow.stack.credentials import ADMIN_USER, load_secrets
from crispflow.stack.ports import HOST, resolve_ports

log = logging.getLogger(__name__)

FINISHED = ("success", "failed")
_PAGE = 100


class AirflowAPIError(CrispflowError):
    """A request failed, or a wait ran out; `status` and `body` are set when the server answered."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _q(part: str) -> str:
    """Quote one path segment (run ids contain ':' and '+')."""
    return quote(part, safe="")


class AirflowAPI:
    """Airflow REST client. `retries` bounds the retries of one request; `backoff` is the first delay (s)."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 1.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session = session or requests.Session()
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"AirflowAPI({self.base_url!r}, username={self.username!r})"

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AirflowAPI:
        """A client for the local stack of `settings.home`: its port and the admin login from secrets.json."""
        creds = load_secrets(settings.home)
        if creds is None:
            raise AirflowAPIError(f"no secrets in {settings.home}: start the stack with `crispflow up` first")
        port = resolve_ports(settings.home).airflow
        return cls(f"http://{HOST}:{port}", ADMIN_USER, creds.admin_password, **kwargs)

    # ------------------------------------------------------------------ transport

    def token(self, *, refresh: bool = False) -> str:
        """A JWT from `POST /auth/token`, cached until the server rejects it."""
        if self._token is None or refresh:
            body = {"username": self.username, "password": self._password}
            self._token = self.request("POST", "/auth/token", json=body, auth=False)["access_token"]
        return self._token

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        auth: bool = True,
    ) -> Any:
        """One API call; returns the decoded JSON body (None when empty)."""
        url = self.base_url + path
        refreshed = False
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {self.token()}"} if auth else {}
            try:
                resp = self._session.request(
                    method, url, json=json, params=params, headers=headers, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt = self._retry_or_raise(attempt, f"{method} {path}: {exc}")
                continue
            if resp.status_code == 401 and auth and not refreshed:
                self.token(refresh=True)
                refreshed = True
                continue
            if resp.status_code >= 500:
                attempt = self._retry_or_raise(attempt, _describe(method, path, resp), resp)
                continue
            if resp.status_code >= 400:
                raise AirflowAPIError(_describe(method, path, resp), status=resp.status_code, body=resp.text)
            break
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise AirflowAPIError(f"{method} {path}: not JSON: {resp.text[:500]}", status=resp.status_code) from None

    def _retry_or_raise(self, attempt: int, message: str, resp: requests.Response | None = None) -> int:
        if attempt >= self.retries:
            status, body = (resp.status_code, resp.text) if resp is not None else (None, None)
            raise AirflowAPIError(f"{message} (gave up after {attempt + 1} attempts)", status=status, body=body)
        delay = min(self.backoff * 2**attempt, 10.0)
        log.warning("%s; retrying in %.1f s", message, delay)
        time.sleep(delay)
        return attempt + 1

    # ------------------------------------------------------------------ endpoints

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{_q(dag_id)}")

    def import_errors(self) -> list[dict[str, Any]]:
        """Every current DAG import error (`filename`, `stack_trace`, ...)."""
        return self._paged("/api/v2/importErrors", "import_errors")

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0, poll: float = 2.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed `dag_id` without import errors; return the DAG.

        Fails early when the DAG's file (`<dag_id>.py`, any phase prefix, or its known fileloc) has an
        import error, and on timeout lists the import errors found.
        """
        deadline = time.monotonic() + timeout
        while True:
            dag = _unless_missing(lambda: self.dag(dag_id))
            if dag is not None and not dag.get("has_import_errors") and not dag.get("is_stale"):
                return dag
            errors = self.import_errors()
            if mine := _errors_for(dag_id, dag, errors):
                raise AirflowAPIError(f"DAG {dag_id!r} does not import:\n{_format_errors(mine)}")
            if time.monotonic() >= deadline:
                found = "not found" if dag is None else "not ready (stale or with import errors)"
                others = f"\nimport errors in the DAGs folder:\n{_format_errors(errors)}" if errors else ""
                raise AirflowAPIError(f"DAG {dag_id!r} {found} after {timeout:.0f} s{others}")
            time.sleep(poll)

    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        logical_date: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Create a DAG run; return its run_id.

        The run_id is chosen here, so a retry after a lost response finds the run instead of creating a
        second one.
        """
        run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}_{secrets.token_hex(3)}"
        body = {"dag_run_id": run_id, "logical_date": logical_date, "conf": dict(conf or {})}
        try:
            created = self.request("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns", json=body)
        except AirflowAPIError as exc:
            if exc.status == 409 and _unless_missing(lambda: self.dag_run(dag_id, run_id)) is not None:
                return run_id  # an earlier attempt of ours created it
            raise
        return created["dag_run_id"]

    def dag_runs(self, dag_id: str, limit: int = 100, *, newest_first: bool = False) -> list[dict[str, Any]]:
        """Up to `limit` runs of a DAG, oldest first (as the API orders them), or the newest `limit`, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if newest_first:
            params["order_by"] = "-id"
        return self.request("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns", params=params)["dag_runs"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 2.0) -> str:
        """Poll the run until it is `success` or `failed`; return that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.dag_run(dag_id, run_id).get("state")
            if state in FINISHED:
                return state
            if time.monotonic() >= deadline:
                raise AirflowAPIError(f"run {run_id!r} of {dag_id!r} still {state!r} after {timeout:.0f} s")
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
        return self._paged(path, "task_instances")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """The XCom value, decoded (the API returns what the database holds, a JSON string for most)."""
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/xcomEntries/{_q(key)}"
        value = self.request("GET", path, params={"map_index": map_index})["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def _paged(self, path: str, field: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.request("GET", path, params={"limit": _PAGE, "offset": len(items)})
            items.extend(page[field])
            if not page[field] or len(items) >= page.get("total_entries", 0):
                return items


def _unless_missing(get: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """`get()`, or None when the server answers 404."""
    try:
        return get()
    except AirflowAPIError as exc:
        if exc.status == 404:
            return None
        raise


def _describe(method: str, path: str, resp: requests.Response) -> str:
    return f"{method} {path} -> HTTP {resp.status_code}: {resp.text[:2000]}"


def _errors_for(dag_id: str, dag: Mapping[str, Any] | None, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Import errors of the file defining `dag_id`: its known fileloc, or a file named after it."""
    locs = {dag.get("fileloc"), dag.get("relative_fileloc")} - {None} if dag else set()

    def matches(err: Mapping[str, Any]) -> bool:
        name = str(err.get("filename", ""))
        named_after = re.fullmatch(rf"(\d+_)?{re.escape(dag_id)}", Path(name).stem) is not None
        return name in locs or any(name.endswith(str(loc)) for loc in locs) or named_after

    return [err for err in errors if matches(err)]


def _format_errors(errors: list[dict[str, Any]]) -> str:
    return "\n".join(f"--- {e.get('filename')}:\n{str(e.get('stack_trace', '')).strip()}" for e in errors)
