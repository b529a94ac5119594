"""What every crispflow DAG shares: a fixed start date, retries with exponential backoff and a timeout, and the
`pipeline` Param."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param

from crispflow.names import NAME

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)


def default_args(execution_timeout: timedelta) -> dict[str, Any]:
    """Transient failures retry with backoff; typed data/config errors fail at once (AirflowFailException)."""
    return {
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
