"""Why a task did nothing, kept where the run can say it: a skip pushes its reason as XCom `skip_reason` before
raising AirflowSkipException, and the listener (`crispflow_airflow.listeners`) turns the reasons into the run's
note, so the grid's skipped columns explain themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from airflow.sdk import Context

SKIP_REASON = "skip_reason"


def skip(context: Context | dict[str, Any], reason: str) -> NoReturn:
    """Record `reason` as this task's XCom `skip_reason`, then skip the task with it."""
    from airflow.sdk.exceptions import AirflowSkipException

    context["ti"].xcom_push(key=SKIP_REASON, value=str(reason))
    raise AirflowSkipException(reason)
