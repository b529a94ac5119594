"""The prediction store's readers: :func:`read_predictions` and :func:`read_feedback`, as pandas frames.

Only the hour partitions overlapping ``[start, end)`` are listed and read, files in parallel; names starting with
``.`` (a writer's temporary files) are skipped. Feedback often arrives after its prediction's window, so
``read_predictions`` looks for labels in ``[start, end + feedback_horizon)`` (default one day) and joins them by
``request_id``; the latest label of a request wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crispflow.predictions.schema import (
    FEEDBACK,
    FEEDBACK_FIELDS,
    PREDICTION_FIELDS,
    PREDICTIONS,
    PredictionLogError,
    arrow_schema,
    check_model,
    utc,
)
from crispflow.predictions.store import PART_RE, Store, open_store, partition

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def _window(start: Any, end: Any) -> tuple[datetime, datetime]:
    start_utc, end_utc = utc("start", start), utc("end", end)
    if end_utc < start_utc:
        raise PredictionLogError(f"end: must not be before start ({end_utc.isoformat()} < {start_utc.isoformat()})")
    return start_utc, end_utc


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hour = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def _list_files(store: Store, model: str, kind: str, start: datetime, end: datetime) -> list[str]:
    """Files of the hour partitions overlapping [start, end): a whole day is one recursive listing, a partial
    day one listing per hour. Sorted by name (partition, then write time)."""
    base = store.join(model, kind)
    wanted = _hours(start, end)
    by_day: dict[str, list[datetime]] = {}
    for hour in wanted:
        by_day.setdefault(f"{hour:%Y-%m-%d}", []).append(hour)
    listings: list[str] = []
    for day, hours in by_day.items():
        if len(hours) == 24:
            listings.append(f"{base}/date={day}")
        else:
            listings.extend(f"{base}/{partition(h)}" for h in hours)
    hour_keys = {(f"{h:%Y-%m-%d}", f"{h:%H}") for h in wanted}

    def listing(path: str) -> list[str]:
        store.fs.invalidate_cache(path)
        try:
            return list(store.fs.find(path))
        except FileNotFoundError:
            return []

    found: list[str] = []
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(listings)))) as pool:
        for paths in pool.map(listing, listings):
            found.extend(paths)
    files = []
    for path in found:
        match = PART_RE.search(str(path).replace("\\", "/"))
        if (
            match
            and (match[1], match[2]) in hour_keys
            and not match[3].startswith(".")
            and match[3].endswith(".parquet")
        ):
            files.append(str(path))
    return sorted(set(files))


def _read_tables(store: Store, files: list[str]) -> list[pa.Table]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read(path: str) -> pa.Table:
        try:
            return pq.read_table(pa.BufferReader(store.fs.cat_file(path)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise PredictionLogError(
                f"prediction log file {path!r} cannot be read: {type(exc).__name__}: {exc}"
            ) from exc

    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        return list(pool.map(read, files))


def _concat(tables: list[pa.Table], base: pa.Schema) -> pa.Table:
    """One table with every base column in its declared type; a feature typed differently across files is
    read back as strings."""
    import pyarrow as pa

    if not tables:
        return base.empty_table()
    try:
        table = pa.concat_tables(tables, promote_options="permissive")  # e.g. int64 + double -> double
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        types: dict[str, set[pa.DataType]] = {}
        for t in tables:
            for field in t.schema:
                if not pa.types.is_null(field.type):
                    types.setdefault(field.name, set()).add(field.type)
        conflicting = {name for name, seen in types.items() if len(seen) > 1 and name not in base.names}
        table = pa.concat_tables([_cast_columns(t, conflicting) for t in tables], promote_options="permissive")
    for field in base:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
        elif table.schema.field(field.name).type != field.type:
            table = table.set_column(
                table.schema.get_field_index(field.name), field.name, table.column(field.name).cast(field.type)
            )
    others = [n for n in table.column_names if n not in base.names]
    return table.select([*base.names, *sorted(others)])


def _cast_columns(table: pa.Table, names: set[str]) -> pa.Table:
    import pyarrow as pa

    for name in names & set(table.column_names):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(pa.string()))
    return table


def _read(
    root: Any, model: str, kind: str, start: Any, end: Any, storage_options: Mapping[str, Any] | None
) -> pa.Table:
    import pyarrow.compute as pc

    model = check_model(model)
    start_utc, end_utc = _window(start, end)
    store = open_store(root, storage_options)
    base = arrow_schema(PREDICTION_FIELDS if kind == PREDICTIONS else FEEDBACK_FIELDS)
    files = _list_files(store, model, kind, start_utc, end_utc) if start_utc < end_utc else []
    table = _concat(_read_tables(store, files), base)
    ts = table.column("ts")
    keep = pc.and_(pc.greater_equal(ts, start_utc), pc.less(ts, end_utc))
    return table.filter(keep)


def _frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    if "label" in df.columns:
        df["label"] = df["label"].astype("float64")
    return df


def read_feedback(
    root: str | os.PathLike[str] | Any,
    model: str,
    start: datetime,
    end: datetime,
    *,
    storage_options: Mapping[str, Any] | None = None,
    latest_only: bool = False,
) -> pd.DataFrame:
    """Feedback rows with ``start <= ts < end``, ordered by ``ts``: columns ``request_id``, ``label`` (float64:
    0/1, a class code or an observed value; older int8 files are cast), ``ts`` (UTC). With `latest_only`, one
    row per request id: its latest label (ties: the last written)."""
    table = _read(root, model, FEEDBACK, start, end, storage_options)
    df = _frame(table)
    df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    if latest_only:
        df = df.drop_duplicates("request_id", keep="last").reset_index(drop=True)
    return df


def read_predictions(
    root: str | os.PathLike[str] | Any,
    model: str,
    start: datetime,
    end: datetime,
    *,
    storage_options: Mapping[str, Any] | None = None,
    with_feedback: bool = True,
    feedback_horizon: timedelta = timedelta(days=1),
) -> pd.DataFrame:
    """Prediction rows with ``start <= ts < end`` (only the overlapping hour partitions are read), ordered by
    ``ts`` then ``request_id``.

    Columns: ``PREDICTION_COLUMNS`` (`crispflow.predictions.schema`), then ``feature.<name>`` columns (sorted),
    then, with `with_feedback`, ``label`` (float64, NaN when no label yet) and ``label_ts``: the latest feedback for
    the request id found in ``[start, end + feedback_horizon)`` (labels arrive after predictions; a label later than
    the horizon is not seen). An empty window gives an empty frame with the base (and label) columns.
    """
    if not isinstance(feedback_horizon, timedelta) or feedback_horizon < timedelta(0):
        raise PredictionLogError(f"feedback_horizon: must be a timedelta >= 0, got {feedback_horizon!r}")
    table = _read(root, model, PREDICTIONS, start, end, storage_options)
    table = table.sort_by([("ts", "ascending"), ("request_id", "ascending")])
    df = _frame(table)
    if not with_feedback:
        return df
    start_utc, end_utc = _window(start, end)
    labels = read_feedback(
        root, model, start_utc, end_utc + feedback_horizon, storage_options=storage_options, latest_only=True
    )
    labels = labels.rename(columns={"ts": "label_ts"})[["request_id", "label", "label_ts"]]
    df = df.merge(labels, on="request_id", how="left", sort=False)
    df["label"] = df["label"].astype("float64")
    return df


def known_requests(
    root: str | os.PathLike[str] | Any,
    model: str,
    request_ids: list[str],
    start: datetime,
    end: datetime,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[set[str], dict[str, float]]:
    """Of `request_ids`: those with an answered prediction (status ``ok``) in ``[start, end)``, and the label
    each already has in the feedback of ``[start, end)`` (the first one stored). Reads only the columns it needs
    (the model server checks /feedback with it: a label only for a request it answered, once)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    model = check_model(model)
    start_utc, end_utc = _window(start, end)
    store = open_store(root, storage_options)
    wanted = pa.array(sorted(set(request_ids)), pa.string())

    def matching(kind: str, columns: list[str]) -> list[pa.Table]:
        files = _list_files(store, model, kind, start_utc, end_utc) if start_utc < end_utc else []

        def read(path: str) -> pa.Table:
            table = pq.read_table(pa.BufferReader(store.fs.cat_file(path)))
            table = table.select([c for c in columns if c in table.column_names])
            return table.filter(pc.is_in(table.column("request_id"), value_set=wanted))

        if not files:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            return list(pool.map(read, files))

    answered: set[str] = set()
    for table in matching(PREDICTIONS, ["request_id", "status"]):
        if "status" in table.column_names:
            table = table.filter(pc.equal(table.column("status"), "ok"))
        answered.update(table.column("request_id").to_pylist())
    labels: dict[str, float] = {}
    for table in matching(FEEDBACK, ["request_id", "label", "ts"]):
        for rid, label in zip(table.column("request_id").to_pylist(), table.column("label").to_pylist(),
                              strict=True):
            if label is not None:
                labels.setdefault(rid, float(label))
    return answered, labels
