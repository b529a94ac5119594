"""AcknowledgeAlertOperator: a person acknowledges a drift alert (one click on the Drift page, or one REST call)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from crispflow_airflow.links import DriftAlertLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class AlertNotAcknowledged(AirflowFailException):
    """The alert does not exist, or someone acknowledged it first: nothing recorded, never retried."""


class SilenceNotCreated(AirflowException):
    """The acknowledgement is recorded but Alertmanager did not create the silence: retried (the retry passes the
    acknowledgement, the same task's, and tries the silence again)."""


class AcknowledgeAlertOperator(BaseOperator):
    """Acknowledge the drift alert `key` of the pipeline's model for the person who triggered the run
    (`crispflow_airflow.context.acting_person`), with an optional note (`crispflow.monitoring.alerts.acknowledge`).

    Exclusive: the first acknowledgement wins; a later one fails with AlertNotAcknowledged naming who acknowledged
    it first and when (not retried), as does an unknown key. A retry of this task passes (same task, same
    person). Returns the acknowledgement: model, key, acknowledged_by, acknowledged_at, note, silence.

    Then, if the connection `crispflow_alertmanager` is defined, the alert's copy in Prometheus (label `dedup_key`)
    is silenced in Alertmanager (`crispflow.monitoring.silences.silence_alert`, idempotent), created by the person
    with the note as comment: `silence` is `{id, created, ends_at}`; without the connection it is None. If
    Alertmanager fails, the task fails with SilenceNotCreated and is retried (a key or connection it cannot
    take fails with InvalidRequest, not retried).

    :param pipeline: pipeline spec name; the model is crispflow-<pipeline> (templated)
    :param key: the alert's dedup key, `<model>.<episode id>` (templated)
    :param note: what the person says about it (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "key", "note")
    ui_color = "#fff4e5"
    operator_extra_links = (DriftAlertLink(),)

    def __init__(self, *, pipeline: str, key: str, note: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.key = key
        self.note = note

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.model.registry import model_name
        from crispflow.monitoring.alerts import AlertAlreadyAcknowledged, AlertNotFound, acknowledge
        from crispflow_airflow.context import acting_person, task_key
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        model, person = model_name(str(self.pipeline)), acting_person(context)
        note = None if self.note in (None, "", "None") else str(self.note)
        try:
            with as_airflow_errors():
                state = acknowledge(PredictionStoreHook().get_root(), model, str(self.key), person, note=note,
                                    ref=task_key(context))
        except (AlertAlreadyAcknowledged, AlertNotFound) as exc:
            raise AlertNotAcknowledged(str(exc)) from exc
        self.log.info("alert %s of %s acknowledged by %s", self.key, model, state["acknowledged_by"])
        comment = state.get("acknowledged_note") or f"acknowledged in Airflow ({task_key(context)})"
        return {"model": model, "key": str(self.key), "acknowledged_by": state["acknowledged_by"],
                "acknowledged_at": state["acknowledged_at"], "note": state.get("acknowledged_note"),
                "silence": self._silence(str(self.key), state["acknowledged_by"], comment)}

    def _silence(self, key: str, person: str, comment: str) -> dict[str, Any] | None:
        from crispflow.monitoring.silences import AlertmanagerError, InvalidSilence
        from crispflow_airflow.exceptions import InvalidRequest
        from crispflow_airflow.hooks.alertmanager import AlertmanagerHook

        if not AlertmanagerHook.is_configured():
            self.log.info("no Alertmanager configured (connection %r): no silence",
                          AlertmanagerHook.default_conn_name)
            return None
        try:
            silence = AlertmanagerHook().silence(key, created_by=person, comment=comment)
        except InvalidSilence as exc:  # a key or a connection Alertmanager cannot take: retrying cannot help
            raise InvalidRequest(f"alert {key} is acknowledged, but cannot be silenced: {exc}") from exc
        except AlertmanagerError as exc:
            raise SilenceNotCreated(f"alert {key} is acknowledged, but not silenced: {exc}") from exc
        self.log.info("alert %s silenced in Alertmanager: silence %s (%s), until %s", key, silence["id"],
                      "created" if silence["created"] else "already there", silence["ends_at"])
        return {"id": silence["id"], "created": silence["created"], "ends_at": silence["ends_at"]}
