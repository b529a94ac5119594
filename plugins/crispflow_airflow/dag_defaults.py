"""What every crispflow DAG shares: a fixed start date and retries with exponential backoff and a timeout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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
