"""DriftAlertNotifier: one digest per drift incident through Airflow's HttpNotifier / SmtpNotifier.

Deduplication, severity, the digest and the alert state live in `crispflow.monitoring.alerts` (channel kinds:
webhook and slack over an http connection, email over smtp; `"optional": true` skips a channel whose connection
is not defined). This notifier resolves the store's root and delivers. The channels come from the pipeline spec's
`alerts:` section (`spec_channels`): a run's conf cannot redirect alerts to another connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context


class DriftAlertNotifier(BaseNotifier):
    """Send one digest of a drift episode to the configured channels (`crispflow.monitoring.alerts.send_alert`).

    Use it as a task callback (`on_success_callback=DriftAlertNotifier(...)` on the DriftSensor) or call it from a
    task (`DriftAlertNotifier(...)(context)`), which gives retries with backoff. The episode record is `record`,
    else the XCom of `source_task_id` (the sensor); none (the sensor skipped): nothing is sent.

    :param channels: channel configs (templated)
    :param record: the episode record (templated)
    :param source_task_id: the task whose XCom holds the record
    :param root_url: predictions root holding the drift store; default: the settings' predictions URL
    :param conn_id: connection for the root; default: the lake's connection
    """

    template_fields = ("channels", "record")

    def __init__(self, *, channels: Sequence[Mapping[str, Any]] | str, record: Mapping[str, Any] | None = None,
                 source_task_id: str | None = None, root_url: str | None = None, conn_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.record = record
        self.source_task_id = source_task_id
        self.root_url = root_url
        self.conn_id = conn_id

    def notify(self, context: Context) -> None:
        self.send(context)

    def send(self, context: Context) -> dict[str, Any]:
        """Claim the incident and deliver to each channel not yet delivered; returns what happened."""
        from crispflow.monitoring.alerts import send_alert
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        ti = context["ti"]
        record = self.record or ti.xcom_pull(task_ids=self.source_task_id or ti.task_id)
        return send_alert(PredictionStoreHook(self.root_url, self.conn_id).get_root(), record, self.channels,
                          by={"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id},
                          deliver=lambda channel, digest: _deliver(channel, digest, context),
                          connection_exists=_connection_exists)


def spec_channels(pipeline: str) -> list[dict[str, Any]]:
    """The alert channels of the pipeline's spec (`alerts.channels`; default: the optional webhook and Slack
    connections `crispflow_alerts_webhook` and `crispflow_alerts_slack`)."""
    from crispflow.spec import load_spec

    return load_spec(pipeline).alerts.as_dicts()


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def _deliver(ch: Mapping[str, Any], d: Mapping[str, Any], context: Context) -> None:
    """Send through Airflow's provider notifiers (no templates rendered: the digest is data, not Jinja)."""
    from crispflow.monitoring.alerts import email_html, slack_payload

    if ch["kind"] == "email":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        SmtpNotifier(to=ch["to"], subject=d["title"], html_content=email_html(d),
                     smtp_conn_id=ch["conn_id"]).notify(context)
        return
    from airflow.providers.http.notifications.http import HttpNotifier

    body = dict(d) if ch["kind"] == "webhook" else slack_payload(d)
    HttpNotifier(http_conn_id=ch["conn_id"], endpoint=ch["endpoint"], json=body,
                 headers={"Content-Type": "application/json", "Idempotency-Key": d["dedup_key"]}).notify(context)
