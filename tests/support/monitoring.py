"""Clients of a running prod-local stack's Prometheus, Alertmanager and alert inbox (the telemetry bridge)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import requests

from crispflow.stack.credentials import Secrets
from crispflow.stack.ports import Ports

T = TypeVar("T")


class Monitoring:
    """Prometheus' HTTP API, Alertmanager's API v2 and the inbox, with the stack's credentials."""

    def __init__(self, ports: Ports, secrets: Secrets) -> None:
        self.prometheus = f"http://127.0.0.1:{ports.prometheus}"
        self.alertmanager = f"http://127.0.0.1:{ports.alertmanager}"
        self.telemetry = f"http://127.0.0.1:{ports.telemetry}"
        self.auth = ("admin", secrets.monitoring_admin_password)
        self.bearer = {"Authorization": f"Bearer {secrets.telemetry_token}"}

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the vector's samples (raises on an invalid expression)."""
        resp = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, auth=self.auth, timeout=30)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {resp.status_code} {body}"
        return body["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.prometheus}/api/v1/targets", auth=self.auth, timeout=30)
        resp.raise_for_status()
        return resp.json()["data"]["activeTargets"]

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification Alertmanager delivered to the inbox, oldest first."""
        resp = requests.get(f"{self.telemetry}/v1/alerts", headers=self.bearer, timeout=30)
        resp.raise_for_status()
        body = resp.json()
        return body["notifications"] if isinstance(body, dict) else body

    def am_alerts(self, **filters: str) -> list[dict[str, Any]]:
        params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
        resp = requests.get(f"{self.alertmanager}/api/v2/alerts", params=params, auth=self.auth, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def diagnose(self, keys: dict[str, str]) -> str:
        """What Prometheus and Alertmanager hold about the drift episodes (for a failure message)."""
        lines = [f"expected keys: {keys}"]
        for expr in ("crispflow_drift_episode_windows", "crispflow_drift_consecutive_windows",
                     'ALERTS{alertname="CrispflowDriftPersistent"}', "crispflow_drift_store_up"):
            lines.append(f"{expr}: {[(r['metric'], r['value'][1]) for r in self.query(expr)]}")
        lines.append(f"alertmanager: {[(a['labels'], a['status']['state']) for a in self.am_alerts()]}")
        lines.append(f"notified: {[[a['labels'] for a in n['payload']['alerts']] for n in self.notifications()]}")
        return "\n".join(lines)

    def silences(self) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.alertmanager}/api/v2/silences", auth=self.auth, timeout=30)
        resp.raise_for_status()
        return resp.json()


def firing(notifications: list[dict[str, Any]], **labels: str) -> list[dict[str, Any]]:
    """The notifications (status firing) whose group holds an alert with these labels."""
    def matches(n: dict[str, Any]) -> bool:
        payload = n.get("payload", n)
        return payload.get("status") == "firing" and any(
            all(a["labels"].get(k) == v for k, v in labels.items()) for a in payload.get("alerts", []))
    return [n for n in notifications if matches(n)]


def received_at(notification: dict[str, Any]) -> float:
    return datetime.fromisoformat(notification["received_at"]).timestamp()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, poll: float = 2.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if result := probe():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)
