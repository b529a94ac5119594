"""Alertmanager through an Airflow connection: silences for acknowledged drift alerts (`crispflow.monitoring.
silences`). Optional: without the connection (the local profile has no Alertmanager) nothing is silenced."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseHook


class AlertmanagerHook(BaseHook):
    """Alertmanager's API v2 at the http connection `alertmanager_conn_id`: host, port and schema (http/https;
    or a host that is a whole URL) give the base URL, login/password basic auth.

    :param alertmanager_conn_id: the Airflow connection id (default `crispflow_alertmanager`)
    """

    conn_name_attr = "alertmanager_conn_id"
    default_conn_name = "crispflow_alertmanager"
    conn_type = "http"
    hook_name = "Alertmanager"

    def __init__(self, alertmanager_conn_id: str = default_conn_name, timeout: float = 10) -> None:
        super().__init__()
        self.alertmanager_conn_id = alertmanager_conn_id
        self.timeout = timeout

    @classmethod
    def is_configured(cls, conn_id: str = default_conn_name) -> bool:
        """True if the connection `conn_id` is defined."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            cls.get_connection(conn_id)
        except AirflowNotFoundException:
            return False
        return True

    def endpoint(self) -> tuple[str, tuple[str, str] | None]:
        """(base URL, basic auth or None) of the connection."""
        conn = self.get_connection(self.alertmanager_conn_id)
        host = (conn.host or "").rstrip("/")
        if "://" in host:
            base = host
        else:
            port = f":{conn.port}" if conn.port else ""
            base = f"{conn.schema or 'http'}://{host}{port}"
        return base, ((conn.login, conn.password or "") if conn.login else None)

    def silence(self, dedup_key: str, created_by: str, comment: str, *,
                duration: timedelta | None = None) -> dict[str, Any]:
        """Silence the alerts labelled `dedup_key=<dedup_key>` (idempotent): `{"id", "created", "ends_at"}`."""
        from crispflow.monitoring.silences import DEFAULT_DURATION, silence_alert

        base, auth = self.endpoint()
        return silence_alert(base, dedup_key, created_by=created_by, comment=comment,
                             duration=duration or DEFAULT_DURATION, auth=auth, timeout=self.timeout)

    def expire(self, silence_id: str) -> None:
        """Expire the silence `silence_id` now."""
        from crispflow.monitoring.silences import expire_silence

        base, auth = self.endpoint()
        expire_silence(base, silence_id, auth=auth, timeout=self.timeout)
