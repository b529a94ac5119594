"""What every crispflow DAG shares: a fixed start date, retries with exponential backoff and a timeout, a check that a
run's conf carries only the DAG's declared params, and the `pipeline`, version, reason and policy-override Params."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param

from crispflow.names import NAME

if TYPE_CHECKING:
    from airflow.sdk import Context

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)


def reject_unknown_conf(context: Context) -> None:
    """Every crispflow task's `pre_execute`: a run's conf may carry only the DAG's declared params (a typo, or a key a
    DAG no longer takes such as watch_drift's `alert_channels`, fails the task with InvalidRequest, never retried)."""
    from crispflow.run_requests import reject_unknown
    from crispflow_airflow.exceptions import as_airflow_errors

    with as_airflow_errors():
        reject_unknown(context["dag_run"].conf, set(context["dag"].params))


def default_args(execution_timeout: timedelta) -> dict[str, Any]:
    """Transient failures retry with backoff; typed data/config errors fail at once (AirflowFailException); unknown
    conf keys fail every task before it runs (`reject_unknown_conf`)."""
    return {
        "pre_execute": reject_unknown_conf,
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
        "execution_timeout": execution_timeout,
    }


def pipeline_param(description: str, default: str | None = "lending_club") -> Param:
    """The `pipeline` Param: a spec name in include/pipelines/ (None allowed only when the default is None)."""
    kind: str | list[str] = "string" if default is not None else ["null", "string"]
    return Param(default, type=kind, pattern=NAME, description=description)


VERSION = r"^[0-9]{1,10}$"


def version_param(description: str, required: bool = True) -> Param:
    """A model version the person saw (`expected_champion`, `expected_canary`): digits only; when not required it
    defaults to None (not checked)."""
    if required:
        return Param(type="string", pattern=VERSION, description=description)
    return Param(None, type=["null", "string"], pattern=VERSION, description=description)


def reason_param(description: str = "Why (recorded in the ledger)") -> Param:
    """A person's reason for a release move, recorded in the ledger: 10 to 500 characters, required."""
    return Param(type="string", minLength=10, maxLength=500, description=description)


def policy_param(section: str, description: str) -> Param:
    """A run's overrides of the spec's `section` policy (`canary`, `drift_watch`, `drift_monitor`): an object of the
    overridable fields only, typed and with the spec's structural bounds, so the REST API refuses a wrong type or an
    unknown field with 400 at trigger time. Whether a value tightens the pipeline's spec is checked in the task."""
    from crispflow import policies, spec

    models = {"canary": (spec.Canary, policies.CANARY), "drift_watch": (spec.DriftWatch, policies.DRIFT_WATCH),
              "drift_monitor": (spec.DriftMonitor, policies.DRIFT_MONITOR)}
    model, directions = models[section]
    schema = policies.override_schema(model.model_json_schema()["properties"], directions)
    return Param({}, description=description, **schema)
