"""What operators reading the prediction log share: where the log lives and which window a run covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context


def predictions_root() -> Any:
    """The prediction log's root as an ObjectStoragePath (with the lake's connection for s3://)."""
    from airflow.sdk import ObjectStoragePath

    from crispflow.settings import Settings

    settings = Settings.from_env()
    conn = settings.lake_conn_id
    return ObjectStoragePath(settings.predictions_url, conn_id=conn) if conn else ObjectStoragePath(
        settings.predictions_url)


def display_path(path: Any) -> str:
    """A path as text for XCom and reports, without the connection id ObjectStoragePath embeds (`s3://conn@b/k`)."""
    from crispflow.monitoring.windows import display_path as display

    return display(path)


def run_window(context: Context, window: timedelta) -> tuple[datetime, datetime]:
    """[start, end) of a run: its data interval, or the `window` before `run_after` for runs without one (manual
    and REST runs of DAGs whose timetable gives none). Plain stdlib datetimes in UTC (pendulum's arithmetic can
    drop a stdlib tzinfo)."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None or start == end:
        end = context["dag_run"].run_after
        start = end - window
    return (datetime.fromtimestamp(start.timestamp(), tz=UTC), datetime.fromtimestamp(end.timestamp(), tz=UTC))
