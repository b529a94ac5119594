"""What a task's context says about its run: who is acting, which window it covers, which events triggered it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context


def run_identity(context: Context) -> dict[str, Any]:
    """Who did it: recorded in manifests and registry tags for lineage."""
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number}


def acting_person(context: Context) -> str:
    """The person a run acts for: the user who triggered a manual, REST or UI run (Airflow records it on the run),
    else who started it on nobody's behalf (`airflow:scheduled`, `airflow:asset_triggered`, ...)."""
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    if user:
        return str(user)
    run_type = getattr(dag_run, "run_type", None)
    return f"airflow:{getattr(run_type, 'value', run_type) or 'unknown'}"


def task_key(context: Context) -> str:
    """The task instance without its try number (`dag/run/task[index]`), so a retry finds the first try's work."""
    ti = context["ti"]
    index = getattr(ti, "map_index", -1)
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}" + (f"[{index}]" if index is not None and index >= 0 else "")


def run_window(context: Context, window: timedelta) -> tuple[datetime, datetime]:
    """[start, end) of a run: its data interval, or the `window` before `run_after` for runs without one (manual
    and REST runs of DAGs whose timetable gives none). Plain stdlib datetimes in UTC (pendulum's arithmetic can
    drop a stdlib tzinfo)."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None or start == end:
        end = context["dag_run"].run_after
        start = end - window
    return (datetime.fromtimestamp(start.timestamp(), tz=UTC), datetime.fromtimestamp(end.timestamp(), tz=UTC))


def triggering_events(context: Context) -> list[dict[str, Any]]:
    """The `extra` of every asset event that triggered this run, oldest first."""
    return [e.extra for evs in (context.get("triggering_asset_events") or {}).values() for e in evs]
