"""DriftSensor: wait (deferred, in the triggerer) until drift persists, then record the episode and emit its event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from crispflow_airflow.assets import DRIFT_DETECTED, emit_once
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.links import DriftAlertLink
from crispflow_airflow.triggers.drift import DriftTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class DriftSensor(BaseSensorOperator):
    """Succeeds once per drift episode: when drift persists in k of the last n windows, outside cooldown and budget
    and with enough new labels (`crispflow.monitoring.episodes.DriftPolicy`). It then records the episode in the
    store (exclusively: a second sensor, or a later check of the same episode, is skipped) and emits
    `DRIFT_DETECTED` with the reason, partition key `<pipeline>/<episode_id>` (one retrain run per episode). No
    episode before `timeout`: the task is skipped (nothing to do this run).

    Deferrable by default: one synchronous check, then the wait moves to the triggerer (`DriftTrigger`), which
    re-reads the store on every poll, so a triggerer restart resumes the wait.

    :param pipeline: pipeline spec name; the model is crispflow-<pipeline> (templated)
    :param policy: a run's overrides of the spec's `drift_watch:` policy, tighten-only (`crispflow.policies.
        DRIFT_WATCH`), e.g. {"k": 1, "cooldown_hours": 12}; a loosening value fails with InvalidRequest (templated)
    :param root_url: predictions root holding the drift store; default: the settings' predictions URL (templated)
    :param conn_id: connection for the root; default: the lake's connection
    :param deferrable: wait in the triggerer (default) instead of a worker slot
    """

    template_fields: Sequence[str] = ("pipeline", "policy", "root_url")
    ui_color = "#fff4e5"
    operator_extra_links = (DriftAlertLink(),)

    def __init__(self, *, pipeline: str, policy: Mapping[str, Any] | str | None = None, root_url: str | None = None,
                 conn_id: str | None = None, deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [DRIFT_DETECTED])
        kwargs.setdefault("poke_interval", 300)
        kwargs.setdefault("timeout", timedelta(minutes=55))
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.policy = policy
        self.root_url = root_url
        self.conn_id = conn_id
        self.deferrable = deferrable

    def _request(self) -> tuple[str, dict[str, Any]]:
        """The model and the policy: the pipeline spec's `drift_watch:` tightened by the run's overrides; a
        malformed or loosening request fails with InvalidRequest, a missing or invalid spec with
        GateConfigurationError."""
        from crispflow.monitoring.episodes import spec_policy, watch_request
        from crispflow.names import NAME_PATTERN
        from crispflow.spec import load_spec

        with as_airflow_errors():
            if not isinstance(self.pipeline, str) or not NAME_PATTERN.match(self.pipeline):
                return watch_request(self.pipeline, self.policy)  # names the bad pipeline
            return watch_request(self.pipeline, self.policy, spec_policy(load_spec(self.pipeline)))

    def _trigger(self, model: str, policy: Mapping[str, Any], **kwargs: Any) -> DriftTrigger:
        return DriftTrigger(model=model, root_url=self.root_url, conn_id=self.conn_id, policy=policy, **kwargs)

    # --- waiting ------------------------------------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        model, policy = self._request()
        decision = self._trigger(model, policy).check()
        self.log.info("%s: fire=%s blocked_by=%s", model, decision["fire"], decision["blocked_by"])
        return PokeReturnValue(is_done=decision["fire"], xcom_value=decision)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return self._complete(context, super().execute(context))
        model, policy = self._request()
        decision = self._trigger(model, policy).check()
        if decision["fire"]:
            return self._complete(context, decision)
        self.log.info("%s: no retrain yet (%s); deferring", model, decision["blocked_by"])
        timeout = self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else float(self.timeout)
        deadline = (datetime.now(UTC) + timedelta(seconds=timeout)).isoformat()
        interval = self.poke_interval.total_seconds() if isinstance(self.poke_interval, timedelta) else float(
            self.poke_interval)
        self.defer(trigger=self._trigger(model, policy, poll_interval=interval, deadline=deadline),
                   method_name="execute_complete")

    def execute_complete(self, context: Context, event: Mapping[str, Any]) -> dict[str, Any]:
        from crispflow_airflow.run_notes import skip

        if event.get("status") != "fire":
            last = (event.get("decision") or {}).get("blocked_by")
            skip(context, f"no drift episode to act on before the deadline (last check: {last})")
        return self._complete(context, event["decision"])

    # --- firing -------------------------------------------------------------------------------------------------

    def _complete(self, context: Context, decision: Mapping[str, Any]) -> dict[str, Any]:
        """Record the episode exclusively, then emit the event; a retry of this task finds its own record."""
        from crispflow.monitoring.episodes import Decision, episode_record
        from crispflow.monitoring.store import claim_episode
        from crispflow_airflow.hooks.predictions import PredictionStoreHook
        from crispflow_airflow.run_notes import skip

        model, _ = self._request()
        ti = context["ti"]
        record = episode_record(Decision(**decision), pipeline=self.pipeline, fired_at=datetime.now(UTC),
                                fired_by={"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id})
        stored = claim_episode(PredictionStoreHook(self.root_url, self.conn_id).get_root(), model, record)
        by = stored.get("fired_by") or {}
        if not emit_once(context, by, stored, asset=DRIFT_DETECTED, pipeline=self.pipeline, item=stored["episode_id"],
                         keys=("dag_id", "run_id", "task_id")):
            skip(context, f"episode {record['episode_id']} of {model} already fired "
                          f"(by {by.get('dag_id')}/{by.get('run_id')}): no second event")
        self.log.info("drift episode %s of %s: retrain requested (features: %s)", stored["episode_id"], model,
                      ", ".join(stored["features"]) or "-")
        return stored
