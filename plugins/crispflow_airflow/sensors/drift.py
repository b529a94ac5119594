"""DriftSensor: wait (deferred, in the triggerer) until drift persists, then record the episode and emit its event."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from crispflow_airflow.assets import DRIFT_DETECTED
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.triggers.drift import DriftTrigger, check_store, store_root

if TYPE_CHECKING:
    from airflow.sdk import Context


def read_episode(root: Any, model: str, episode_id: str) -> dict[str, Any] | None:
    """The stored record of an episode, or None."""
    from crispflow.monitoring.store import drift_dir

    path = drift_dir(root, model) / "episodes" / f"{episode_id}.json"
    return json.loads(path.read_bytes()) if path.exists() else None


class DriftSensor(BaseSensorOperator):
    """Succeeds once per drift episode: when drift persists in k of the last n windows, outside cooldown and budget
    and with enough new labels (`crispflow.monitoring.episodes.DriftPolicy`). It then records the episode in the
    store (exclusively: a second sensor, or a later check of the same episode, is skipped) and emits
    `DRIFT_DETECTED` with the reason. No episode before `timeout`: the task is skipped (nothing to do this run).

    Deferrable by default: one synchronous check, then the wait moves to the triggerer (`DriftTrigger`), which
    re-reads the store on every poll, so a triggerer restart resumes the wait.

    :param pipeline: pipeline spec name; the model is crispflow-<pipeline> (templated)
    :param policy: `DriftPolicy` overrides, e.g. {"k": 3, "n": 4} (templated)
    :param root_url: predictions root holding the drift store; default: the settings' predictions URL (templated)
    :param conn_id: connection for the root; default: the lake's connection
    :param deferrable: wait in the triggerer (default) instead of a worker slot
    """

    template_fields: Sequence[str] = ("pipeline", "policy", "root_url")
    ui_color = "#fff4e5"

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

    # --- resolution ---------------------------------------------------------------------------------------------

    def _target(self) -> tuple[str, str, str | None, dict[str, Any]]:
        from crispflow.errors import ParamsError
        from crispflow.model.registry import model_name
        from crispflow.monitoring.episodes import DriftPolicy
        from crispflow.names import NAME_PATTERN
        from crispflow.settings import Settings

        with as_airflow_errors():
            if not isinstance(self.pipeline, str) or not NAME_PATTERN.match(self.pipeline):
                raise ParamsError(f"pipeline: {self.pipeline!r} is not a valid pipeline name")
            policy = self.policy
            if isinstance(policy, str):  # rendered without native objects
                try:
                    policy = json.loads(policy) if policy.strip() else {}
                except ValueError:
                    raise ParamsError(f"policy: {policy!r} is not a JSON object") from None
            if policy is not None and not isinstance(policy, Mapping):
                raise ParamsError(f"policy: must be an object, got {type(policy).__name__}")
            checked = DriftPolicy.from_dict(policy).to_dict()
        settings = Settings.from_env()
        conn = self.conn_id if self.conn_id is not None else settings.lake_conn_id
        return model_name(self.pipeline), self.root_url or settings.predictions_url, conn, checked

    # --- waiting ------------------------------------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        model, url, conn, policy = self._target()
        decision = check_store(model, url, conn, policy)
        self.log.info("%s: fire=%s blocked_by=%s", model, decision["fire"], decision["blocked_by"])
        return PokeReturnValue(is_done=decision["fire"], xcom_value=decision)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return self._complete(context, super().execute(context))
        model, url, conn, policy = self._target()
        decision = check_store(model, url, conn, policy)
        if decision["fire"]:
            return self._complete(context, decision)
        self.log.info("%s: no retrain yet (%s); deferring", model, decision["blocked_by"])
        timeout = self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else float(self.timeout)
        deadline = (datetime.now(UTC) + timedelta(seconds=timeout)).isoformat()
        interval = self.poke_interval.total_seconds() if isinstance(self.poke_interval, timedelta) else float(
            self.poke_interval)
        self.defer(trigger=DriftTrigger(model=model, root_url=url, conn_id=conn, policy=policy,
                                        poll_interval=interval, deadline=deadline),
                   method_name="execute_complete")

    def execute_complete(self, context: Context, event: Mapping[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if event.get("status") != "fire":
            last = (event.get("decision") or {}).get("blocked_by")
            raise AirflowSkipException(f"no drift episode to act on before the deadline (last check: {last})")
        return self._complete(context, event["decision"])

    # --- firing -------------------------------------------------------------------------------------------------

    def _complete(self, context: Context, decision: Mapping[str, Any]) -> dict[str, Any]:
        """Record the episode exclusively, then emit the event; a retry of this task finds its own record."""
        from airflow.sdk.exceptions import AirflowSkipException

        from crispflow.monitoring.episodes import Decision, episode_record
        from crispflow.monitoring.store import record_episode

        model, url, conn, _ = self._target()
        ti = context["ti"]
        me = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id}
        record = episode_record(Decision(**decision), pipeline=self.pipeline, fired_at=datetime.now(UTC),
                                fired_by=me)
        root = store_root(url, conn)
        if not record_episode(root, model, record["episode_id"], record):
            existing = read_episode(root, model, record["episode_id"]) or {}
            by = existing.get("fired_by") or {}
            if {k: by.get(k) for k in me} != me:
                raise AirflowSkipException(f"episode {record['episode_id']} of {model} already fired "
                                           f"(by {by.get('dag_id')}/{by.get('run_id')}): no second event")
            record = existing  # a retry of the run that recorded it: emit its event
        context["outlet_events"][DRIFT_DETECTED].extra = record
        self.log.info("drift episode %s of %s: retrain requested (features: %s)", record["episode_id"], model,
                      ", ".join(record["features"]) or "-")
        return record
