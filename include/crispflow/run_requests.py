"""Validation of what users and other DAGs send in: run `conf`/params and asset-event payloads."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from crispflow.data.sources import Interval
from crispflow.errors import ParamsError
from crispflow.names import NAME_PATTERN

if TYPE_CHECKING:
    from crispflow.lake import Lake
    from crispflow.spec import PipelineSpec


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


VERSION_ID = re.compile(r"^ds-[0-9a-f]{16}$")


def training_requests(conf: Mapping[str, Any] | None, events: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a training run may train on, in order of preference: the explicit params, else every triggering
    curated-dataset event, newest first. Each is validated (see `training_request`)."""
    conf = dict(conf or {})
    if conf.get("pipeline") or conf.get("dataset_version_id") or not events:
        return [training_request(conf, [])]
    return [training_request(conf, [event]) for event in reversed(events)]


def training_request(conf: Mapping[str, Any] | None, events: list[Mapping[str, Any]]) -> dict[str, Any]:
    """What a training run trains on: explicit params win; else the newest curated-dataset asset event.

    Asset events can be emitted by anyone who can write to the asset (Airflow 3 lets them bypass trigger
    permissions), so their payload is validated as strictly as a user's conf.
    """
    conf = dict(conf or {})
    if conf.get("pipeline") or conf.get("dataset_version_id"):
        source, payload = "conf", conf
    elif events:
        source, payload = "asset event", dict(events[-1])
    else:
        raise ParamsError("pipeline/dataset_version_id: give both in conf, or let a published dataset trigger the run")
    pipeline, version = payload.get("pipeline"), payload.get("dataset_version_id")
    if not isinstance(pipeline, str) or not NAME_PATTERN.match(pipeline):
        raise ParamsError(f"{source}: pipeline {pipeline!r} is not a valid pipeline name")
    if not isinstance(version, str) or not VERSION_ID.match(version):
        raise ParamsError(f"{source}: dataset_version_id {version!r} is not a dataset version id (ds-<16 hex>)")
    budget = conf.get("search_budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or not 1 <= budget <= 200):
        raise ParamsError(f"search_budget: {budget!r} must be an integer from 1 to 200")
    force = conf.get("force_bless", False)
    reason = str(conf.get("force_reason") or "").strip()
    if not isinstance(force, bool):
        raise ParamsError(f"force_bless: {force!r} must be true or false")
    if force and len(reason) < 10:
        raise ParamsError("force_reason: forcing a blessing needs a reason of at least 10 characters")
    return {"pipeline": pipeline, "dataset_version_id": version, "search_budget": budget, "source": source,
            "coalesced_events": max(0, len(events) - 1), "force_bless": force, "force_reason": reason}


def choose_training_request(conf: Mapping[str, Any] | None, events: list[Mapping[str, Any]],
                            rows_of: Callable[[str, str], tuple[int, int]]) -> dict[str, Any] | str:
    """The request to train on, or the reason there is none (a skip, not an error).

    Several events may arrive in one run (e.g. a monthly partition and a backfilled history): newest first, the
    first dataset large enough wins and the rest are coalesced into this run. `rows_of(pipeline, version_id)`
    gives (published rows, rows training needs), as `published_rows` does.
    """
    sizes = []
    for request in training_requests(conf, events):
        rows, needed = rows_of(request["pipeline"], request["dataset_version_id"])
        if rows >= needed:
            return request
        sizes.append(f"{request['dataset_version_id']}: {rows} rows < training.min_rows={needed}")
    return f"no dataset large enough to train on ({'; '.join(sizes)})"


def published_rows(spec: PipelineSpec, lake: Lake, version_id: str) -> tuple[int, int]:
    """(rows of the requested dataset version, rows training needs); a version that does not exist, or a
    pipeline without a training section, is a bad request (a forged event cannot point at nothing)."""
    from crispflow.data.datasets import read_manifest
    from crispflow.errors import LakeError

    if spec.training is None:
        raise ParamsError(f"pipeline: {spec.name!r} has no training section in its spec")
    try:
        manifest = read_manifest(lake, version_id, spec.name)
    except LakeError:
        raise ParamsError(f"dataset_version_id: {version_id} is not a published version of {spec.name!r}") from None
    return manifest["rows"]["published"], spec.training.min_rows


PARTITION_ITEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,180}$")


def partition_key(pipeline: str, item: str) -> str:
    """The partition key of a pipeline's asset event: `<pipeline>/<item>` (item: a dataset version, a drift episode,
    a scored version). One key, one consumer run: events of two pipelines never share a key."""
    if not NAME_PATTERN.match(pipeline):
        raise ParamsError(f"pipeline: {pipeline!r} is not a valid pipeline name")
    if not PARTITION_ITEM.match(item):
        raise ParamsError(f"partition key: {item!r} is not a valid item id")
    return f"{pipeline}/{item}"


def check_partition(key: str | None, events: list[Mapping[str, Any]], item_field: str) -> None:
    """A partitioned run trusts its events only if each one names the run's own key: the `pipeline` and
    `item_field` of every event's payload must make `key`. Runs without a key (manual, REST) are not checked."""
    if key is None:
        return
    for event in events:
        named = f"{event.get('pipeline')}/{event.get(item_field)}"
        if named != key:
            raise ParamsError(f"asset event: pipeline/{item_field} {named!r} does not match the run's partition "
                              f"key {key!r}")


def target_pipelines(requested: str | None, available: list[str], serving: Callable[[str], bool]) -> list[str]:
    """The pipelines a monitoring run acts on: the one requested (a manual run), else every pipeline spec whose
    model is being served (`serving(pipeline)`, e.g. it has a champion), in name order."""
    if requested:
        if not NAME_PATTERN.match(requested):
            raise ParamsError(f"pipeline: {requested!r} is not a valid pipeline name")
        return [requested]
    return [name for name in sorted(available) if serving(name)]
