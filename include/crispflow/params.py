"""Validation of what users and other DAGs send in: run `conf`/params and asset-event payloads."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from crispflow.errors import ParamsError
from crispflow.sources import Interval


def reject_unknown(conf: Mapping[str, Any] | None, allowed: set[str]) -> None:
    """A run's conf may only carry the DAG's declared params: a typo must not be silently ignored."""
    unknown = sorted(set(conf or {}) - allowed)
    if unknown:
        raise ParamsError(f"conf: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _day(field: str, value: object) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        d = date.fromisoformat(str(value))
    except ValueError:
        raise ParamsError(f"{field}: {value!r} is not a date (YYYY-MM-DD)") from None
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def resolve_interval(start: object, end: object, interval_start: datetime | None,
                     interval_end: datetime | None) -> Interval:
    """The interval a run reads: explicit `start`/`end` params win; else the run's data interval."""
    s, e = _day("start", start), _day("end", end)
    if (s is None) != (e is None):
        raise ParamsError("start/end: give both dates or neither")
    if s is None:
        if interval_start is None or interval_end is None or interval_start == interval_end:
            raise ParamsError("start/end: this run has no data interval (a manual run?); give start and end dates")
        s, e = interval_start, interval_end
    if s >= e:  # type: ignore[operator]
        raise ParamsError(f"start/end: start {s:%Y-%m-%d} must be before end {e:%Y-%m-%d}")
    return Interval(s, e)  # type: ignore[arg-type]
