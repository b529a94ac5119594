"""The prediction log: every prediction and feedback label of the model server, as partitioned Parquet.

Layout under the root (a local folder, ``file://``, ``s3://`` or an Airflow ``ObjectStoragePath``)::

    <root>/<model>/predictions/date=YYYY-MM-DD/hour=HH/part-<UTC write time>-<uuid>.parquet
    <root>/<model>/feedback/date=YYYY-MM-DD/hour=HH/part-<UTC write time>-<uuid>.parquet

A file's partition is the UTC hour of its rows' ``ts`` (a batch spanning an hour boundary writes one file per
hour). Each file is written once and never rewritten: locally to a hidden temporary name (``.part-...tmp``,
fsynced) that is then renamed, on S3 as a single PUT; readers skip names starting with ``.`` (a process killed
mid-write may leave such a temporary file behind, never a partial ``part-*``). Compression: zstd. Several writers
(server workers, replicas) may share a root: file names never collide.

Prediction columns: ``request_id`` (string), ``ts`` (timestamp[us, UTC]), ``model``, ``version``, ``alias``
(string), ``served`` (bool), ``entity`` (string, nullable), ``score`` (float64, nullable), ``latency_ms``
(float64), ``status`` (string), then one column per feature named ``feature.<name>``, typed as Arrow infers it
from the batch (so drift monitoring reads features columnar). A feature whose values in a batch have no common
scalar type (e.g. ``True`` and ``1``, ``"a"`` and ``2``, an int beyond int64) is stored as strings (``str(v)``),
dicts and lists as JSON strings; across files, a feature stored with different types is read back as strings.
Feedback columns: ``request_id`` (string), ``label`` (int8, 0/1), ``ts`` (timestamp[us, UTC]).

Writing (:class:`PredictionLog`): ``log()`` only appends the row dicts to a deque under a lock (it never waits on
I/O); a background thread builds the Arrow table and writes every ``flush_interval`` seconds or as soon as
``batch_rows`` rows are pending. Memory is bounded: at most ``max_pending_rows`` rows (queued + being written);
rows beyond it are dropped and counted in ``dropped``. A failed write keeps its rows (they stay within the bound)
and is retried with exponential backoff; ``write_errors`` counts failures; only the hour files that failed are
written again, so a retry never duplicates rows. ``close()`` (the server's shutdown hook: SIGTERM -> graceful
shutdown -> close) writes everything left, retrying until its timeout; an atexit hook closes a forgotten log.

Reading (:func:`read_predictions`, :func:`read_feedback`): only the hour partitions overlapping ``[start, end)``
are listed and read. Feedback often arrives after its prediction's window, so ``read_predictions`` looks for
labels in ``[start, end + feedback_horizon)`` (default one day) and joins them by ``request_id``; the latest label
of a request wins.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

FEATURE_PREFIX = "feature."
PREDICTIONS = "predictions"
FEEDBACK = "feedback"
PREDICTION_FIELDS: tuple[tuple[str, str], ...] = (
    ("request_id", "string"),
    ("ts", "ts"),
    ("model", "string"),
    ("version", "string"),
    ("alias", "string"),
    ("served", "bool"),
    ("entity", "string"),
    ("score", "float64"),
    ("latency_ms", "float64"),
    ("status", "string"),
)
FEEDBACK_FIELDS: tuple[tuple[str, str], ...] = (("request_id", "string"), ("label", "int8"), ("ts", "ts"))
PREDICTION_COLUMNS = tuple(name for name, _ in PREDICTION_FIELDS)
FEEDBACK_COLUMNS = tuple(name for name, _ in FEEDBACK_FIELDS)
_HOUR_US = 3_600_000_000
_PART_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/([^/]+)$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")


class PredictionLogError(CrispflowError, ValueError):
    """Bad input to the prediction log (the message names the field and the rule), or a store it cannot read."""


# --- roots ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Store:
    """Where the log lives: an fsspec filesystem and a path on it; `local` is set for the local filesystem."""

    fs: Any
    path: str
    local: bool
    display: str  # the root without credentials, for messages and logs

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return parts._replace(netloc=parts.hostname or "").geturl()
    return url


def _store(root: Any, storage_options: Mapping[str, Any] | None) -> _Store:
    """Resolve a root (str, os.PathLike, UPath or Airflow ObjectStoragePath) to a filesystem and a path (no I/O)."""
    from upath import UPath

    if isinstance(root, UPath):
        if storage_options:
            raise PredictionLogError(
                "storage_options: must be None when root is a UPath/ObjectStoragePath "
                "(the path carries its own filesystem options)"
            )
        path = root
    elif isinstance(root, str | os.PathLike):
        text = os.fspath(root)
        if not isinstance(text, str) or not text:
            raise PredictionLogError(f"root: must be a non-empty path or URL, got {root!r}")
        path = UPath(text, **dict(storage_options or {}))
    else:
        raise PredictionLogError(f"root: must be str, os.PathLike or UPath, got {type(root).__name__}")
    protocol = path.protocol or "file"
    local = protocol in ("file", "local")
    display = path.path if local else f"{protocol}://{path.path}"
    return _Store(fs=path.fs, path=path.path.rstrip("/") or "/", local=local, display=_redact(display))


def storage_options_from_env(
    root: str | os.PathLike[str] | Any, environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """s3fs options from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION.

    None unless `root` is an ``s3://`` URL and at least one of them is set (then s3fs's own credential chain
    is not needed). The model server gets its S3 endpoint this way in production.
    """
    env = os.environ if environ is None else environ
    text = root if isinstance(root, str) else os.fspath(root) if isinstance(root, os.PathLike) else ""
    if not str(text).lower().startswith(("s3://", "s3a://")):
        return None
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if env.get("AWS_ACCESS_KEY_ID"):
        options["key"] = env["AWS_ACCESS_KEY_ID"]
    if env.get("AWS_SECRET_ACCESS_KEY"):
        options["secret"] = env["AWS_SECRET_ACCESS_KEY"]
    if env.get("AWS_SESSION_TOKEN"):
        options["token"] = env["AWS_SESSION_TOKEN"]
    if env.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = env["AWS_ENDPOINT_URL"]
    if env.get("AWS_DEFAULT_REGION"):
        client["region_name"] = env["AWS_DEFAULT_REGION"]
    if client:
        options["client_kwargs"] = client
    return options or None


def _check_model(model: Any) -> str:
    if not isinstance(model, str) or not _MODEL_RE.match(model) or model.endswith((" ", ".")):
        raise PredictionLogError(
            f"model: must be a registered model name of letters, digits, '.', '_', '-' or "
            f"spaces, not starting with '.', got {model!r}"
        )
    return model


def _utc(field: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise PredictionLogError(f"{field}: must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PredictionLogError(f"{field}: must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


# --- Arrow tables -----------------------------------------------------------------------------------------------


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
        "int8": pa.int8(),
        "ts": pa.timestamp("us", tz="UTC"),
    }[kind]


def _schema(fields: Iterable[tuple[str, str]]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(kind)) for name, kind in fields])


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _typed_column(values: list[Any], kind: str) -> pa.Array:
    """A base column of a known type; strings accept anything (str() of it), other types must convert."""
    import pyarrow as pa

    try:
        return pa.array(values, _arrow_type(kind))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        if kind != "string":
            raise
        return pa.array([_as_text(v) for v in values], pa.string())


def _feature_column(values: list[Any]) -> pa.Array:
    """Arrow's inferred scalar type; nested or mixed values become strings (see the module docstring)."""
    import pyarrow as pa

    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return pa.array([_as_text(v) for v in values], pa.string())
    if pa.types.is_nested(array.type) or pa.types.is_dictionary(array.type):
        return pa.array([_as_text(v) for v in values], pa.string())
    return array


def _prediction_table(rows: list[dict[str, Any]], model: str) -> pa.Table:
    import pyarrow as pa

    columns: dict[str, pa.Array] = {}
    for name, kind in PREDICTION_FIELDS:
        default = model if name == "model" else None
        columns[name] = _typed_column([r.get(name, default) for r in rows], kind)
    features = [r.get("features") or {} for r in rows]
    names = sorted({key for f in features for key in f})
    for key in names:
        columns[FEATURE_PREFIX + str(key)] = _feature_column([f.get(key) for f in features])
    return pa.table(columns)


def _feedback_table(rows: list[dict[str, Any]]) -> pa.Table:
    import pyarrow as pa

    return pa.table({name: _typed_column([r.get(name) for r in rows], kind) for name, kind in FEEDBACK_FIELDS})


def _parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _hour_groups(table: pa.Table) -> list[tuple[datetime, Any]]:
    """(UTC hour, row indices) for each hour present in the table's `ts` column."""
    import numpy as np
    import pyarrow as pa

    micros = table.column("ts").cast(pa.int64()).to_numpy()
    hours = micros // _HOUR_US
    unique, inverse = np.unique(hours, return_inverse=True)
    return [(datetime.fromtimestamp(int(h) * 3600, UTC), np.flatnonzero(inverse == i)) for i, h in enumerate(unique)]


# --- the writer -------------------------------------------------------------------------------------------------


class PredictionLog:
    """Asynchronous, batched, bounded writer of predictions and feedback (see the module docstring).

    :param root: the store's root: a local path, ``file://`` or ``s3://`` URL, or a UPath/ObjectStoragePath.
    :param model: the registered model's name (a path segment of the layout).
    :param batch_rows: write as soon as this many rows are pending.
    :param flush_interval: otherwise write every this many seconds.
    :param max_pending_rows: at most this many rows in memory (queued + being written); more are dropped.
    :param storage_options: fsspec options for a str/PathLike root (e.g. from :func:`storage_options_from_env`).
    :param retry_initial: the first backoff after a failed write, in seconds (doubles up to `retry_max`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        model: str,
        *,
        batch_rows: int = 2000,
        flush_interval: float = 1.0,
        max_pending_rows: int = 200_000,
        storage_options: dict[str, Any] | None = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        for name, value in (("batch_rows", batch_rows), ("max_pending_rows", max_pending_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PredictionLogError(f"{name}: must be an integer >= 1, got {value!r}")
        for name, value in (
            ("flush_interval", flush_interval),
            ("retry_initial", retry_initial),
            ("retry_max", retry_max),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise PredictionLogError(f"{name}: must be a number > 0, got {value!r}")
        self.model = _check_model(model)
        self._store = _store(root, storage_options)
        self.batch_rows = batch_rows
        self.flush_interval = float(flush_interval)
        self.max_pending_rows = max_pending_rows
        self.retry_initial = float(retry_initial)
        self.retry_max = float(retry_max)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._io_lock = threading.Lock()  # one writer at a time (the thread, flush(), close())
        self._predictions: deque[dict[str, Any]] = deque()
        self._feedback: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._dropped = 0
        self._written = 0
        self._feedback_written = 0
        self._write_errors = 0
        self._files_written = 0
        self._failures = 0  # consecutive failed writes (drives the backoff)
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = threading.Event()
        self._close_deadline = 0.0
        self._warned_closed = False

    # counters, read by /metrics (plain int reads are atomic)
    @property
    def dropped(self) -> int:
        """Rows dropped because the bound was reached, the log was closed, or close() timed out."""
        return self._dropped

    @property
    def written(self) -> int:
        """Prediction rows written."""
        return self._written

    @property
    def feedback_written(self) -> int:
        return self._feedback_written

    @property
    def pending(self) -> int:
        """Rows in memory: queued plus being written."""
        with self._lock:
            return len(self._predictions) + len(self._feedback) + self._in_flight

    @property
    def write_errors(self) -> int:
        """Failed write attempts (each is retried)."""
        return self._write_errors

    @property
    def files_written(self) -> int:
        return self._files_written

    @property
    def root(self) -> str:
        """The root, without credentials."""
        return self._store.display

    def start(self) -> None:
        """Start the background writer (idempotent). At interpreter exit, close() runs if nobody called it."""
        with self._lock:
            if self._closing:
                raise PredictionLogError("start: the prediction log is closed")
            if self._thread is not None:
                return
            import numpy  # noqa: F401  (imported here, not on the first write: the writer starts warm)
            import pyarrow.parquet  # noqa: F401

            self._next_flush = time.monotonic() + self.flush_interval
            self._thread = threading.Thread(target=self._run, name=f"prediction-log-{self.model}", daemon=True)
            self._thread.start()
        atexit.register(self.close)

    def log(self, rows: list[dict[str, Any]]) -> None:
        """Queue prediction rows (never waits on I/O). Rows are kept as given: do not mutate them afterwards.

        Each row needs ``request_id`` (str) and ``ts`` (tz-aware datetime); see the module docstring for the rest.
        Rows beyond ``max_pending_rows``, or logged after close(), are dropped and counted in ``dropped``.
        """
        self._check_rows(rows, "log")
        self._enqueue(self._predictions, rows)

    def log_feedback(self, rows: list[dict[str, Any]]) -> None:
        """Queue feedback rows ``{"request_id": str, "label": 0 | 1, "ts": tz-aware datetime}``."""
        self._check_rows(rows, "log_feedback")
        for i, row in enumerate(rows):
            label = row.get("label")
            if label not in (0, 1) or isinstance(label, float):
                raise PredictionLogError(f"log_feedback: rows[{i}].label: must be 0 or 1, got {label!r}")
        self._enqueue(self._feedback, [{**row, "label": int(row["label"])} for row in rows])

    def flush(self) -> None:
        """Write what is pending now, in the caller's thread; raises PredictionLogError if a write failed
        (its rows stay queued for the next attempt)."""
        error = self._write_pending()
        if error is not None:
            raise PredictionLogError(f"prediction log {self.root!r}: write failed, rows kept for retry: {error}")

    def close(self, timeout: float = 30.0) -> None:
        """Write everything pending (retrying failed writes until `timeout`), then stop the writer. Idempotent.

        Rows still unwritten at the deadline are counted in ``dropped`` and reported in an error log line.
        """
        with self._wake:
            first = not self._closing
            if first:
                self._closing = True
                self._close_deadline = time.monotonic() + max(0.0, timeout)
                self._wake.notify_all()
            thread = self._thread
        if not first:
            self._closed.wait(timeout)
            return
        try:
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout + 5.0)
            else:
                self._drain()
        finally:
            self._closed.set()
            atexit.unregister(self.close)

    # --- internals ---------------------------------------------------------------------------------------------

    @staticmethod
    def _check_rows(rows: Any, method: str) -> None:
        if not isinstance(rows, list):
            raise PredictionLogError(f"{method}: rows must be a list of dicts, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise PredictionLogError(f"{method}: rows[{i}] must be a dict, got {type(row).__name__}")
            request_id = row.get("request_id")
            if not isinstance(request_id, str) or not request_id:
                raise PredictionLogError(
                    f"{method}: rows[{i}].request_id: must be a non-empty string, got {request_id!r}"
                )
            ts = row.get("ts")
            if not isinstance(ts, datetime) or ts.tzinfo is None:
                raise PredictionLogError(f"{method}: rows[{i}].ts: must be a timezone-aware datetime, got {ts!r}")

    def _enqueue(self, queue: deque[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock:
            if self._closing:
                self._dropped += len(rows)
                warn = not self._warned_closed
                self._warned_closed = True
            else:
                warn = False
                space = self.max_pending_rows - len(self._predictions) - len(self._feedback) - self._in_flight
                if space >= len(rows):
                    queue.extend(rows)
                else:
                    if space > 0:
                        queue.extend(rows[:space])
                    self._dropped += len(rows) - max(space, 0)
                if len(self._predictions) + len(self._feedback) >= self.batch_rows:
                    self._wake.notify()
        if warn:
            log.warning("prediction log for %r is closed: rows logged after close() are dropped", self.model)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing:
                    now = time.monotonic()
                    if self._failures:
                        wake_at = self._retry_at
                    elif len(self._predictions) + len(self._feedback) >= self.batch_rows:
                        break
                    else:
                        wake_at = self._next_flush
                    if now >= wake_at:
                        break
                    self._wake.wait(wake_at - now)
                if self._closing:
                    break
            try:
                self._write_pending()
            except Exception:  # never let the writer die; _write_pending already counts and logs
                log.exception("prediction log writer: unexpected error")
            self._next_flush = time.monotonic() + self.flush_interval
        self._drain()

    def _drain(self) -> None:
        """Write until nothing is pending or the close deadline passes; count what is left as dropped."""
        while True:
            self._write_pending()
            with self._lock:
                left = len(self._predictions) + len(self._feedback)
                if not left:
                    return
                now = time.monotonic()
                if now >= self._close_deadline:
                    self._predictions.clear()
                    self._feedback.clear()
                    self._dropped += left
                    break
                pause = min(max(self._retry_at - now, 0.05), self._close_deadline - now)
            time.sleep(pause)
        log.error(
            "prediction log %r: %d rows could not be written before the close deadline and are lost "
            "(counted in dropped)",
            self.root,
            left,
        )

    def _write_pending(self) -> str | None:
        """Take everything queued and write it; failed partitions go back to the front of the queue.
        Returns a description of the first error, or None."""
        with self._io_lock:
            with self._lock:
                predictions, self._predictions = self._predictions, deque()
                feedback, self._feedback = self._feedback, deque()
                taken = len(predictions) + len(feedback)
                self._in_flight += taken
            if not taken:
                return None
            kept_p, written_p, error_p = self._write_kind(PREDICTIONS, list(predictions))
            kept_f, written_f, error_f = self._write_kind(FEEDBACK, list(feedback))
            error = error_p or error_f
            with self._lock:
                self._in_flight -= taken
                self._predictions.extendleft(reversed(kept_p))
                self._feedback.extendleft(reversed(kept_f))
                self._written += written_p
                self._feedback_written += written_f
                if error:
                    self._write_errors += 1
                    self._failures += 1
                    backoff = min(self.retry_initial * 2 ** (self._failures - 1), self.retry_max)
                    self._retry_at = time.monotonic() + backoff
                else:
                    self._failures = 0
            if error:
                log.warning(
                    "prediction log %r: write failed (%s); %d rows kept, retry in %.1f s",
                    self.root,
                    error,
                    len(kept_p) + len(kept_f),
                    backoff,
                )
            return error

    def _write_kind(self, kind: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, str | None]:
        """Write rows of one kind, one file per hour. Returns (rows to retry, rows written, first error)."""
        if not rows:
            return [], 0, None
        try:
            table = _prediction_table(rows, self.model) if kind == PREDICTIONS else _feedback_table(rows)
            groups = _hour_groups(table)
            files = [(hour, idx, _parquet_bytes(table.take(idx) if len(groups) > 1 else table)) for hour, idx in groups]
        except Exception as exc:  # the rows themselves cannot be converted: retrying cannot help
            with self._lock:
                self._dropped += len(rows)
            log.error(
                "prediction log %r: %d %s rows dropped, they cannot be stored: %s: %s",
                self.root,
                len(rows),
                kind,
                type(exc).__name__,
                exc,
            )
            return [], 0, None
        kept: list[dict[str, Any]] = []
        written = 0
        error: str | None = None
        for hour, indices, data in files:
            try:
                self._put(self._file_name(kind, hour), data)
            except Exception as exc:
                error = error or f"{type(exc).__name__}: {exc}"
                kept.extend(rows[i] for i in indices)
            else:
                written += len(indices)
        return kept, written, error

    def _file_name(self, kind: str, hour: datetime) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{self.model}/{kind}/date={hour:%Y-%m-%d}/hour={hour:%H}/part-{stamp}-{uuid.uuid4().hex}.parquet"

    def _put(self, relative: str, data: bytes) -> None:
        """Publish one file atomically: temp + fsync + rename locally, a single PUT on object stores."""
        store = self._store
        target = store.join(relative)
        if not store.local:
            store.fs.pipe_file(target, data)
            with self._lock:
                self._files_written += 1
            return
        directory, name = os.path.split(target)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        with self._lock:
            self._files_written += 1


# --- the readers ------------------------------------------------------------------------------------------------


def _window(start: Any, end: Any) -> tuple[datetime, datetime]:
    start_utc, end_utc = _utc("start", start), _utc("end", end)
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


def _list_files(store: _Store, model: str, kind: str, start: datetime, end: datetime) -> list[str]:
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
            listings.extend(f"{base}/date={day}/hour={h:%H}" for h in hours)
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
        match = _PART_RE.search(str(path).replace("\\", "/"))
        if (
            match
            and (match[1], match[2]) in hour_keys
            and not match[3].startswith(".")
            and match[3].endswith(".parquet")
        ):
            files.append(str(path))
    return sorted(set(files))


def _read_tables(store: _Store, files: list[str]) -> list[pa.Table]:
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

    model = _check_model(model)
    start_utc, end_utc = _window(start, end)
    store = _store(root, storage_options)
    base = _schema(PREDICTION_FIELDS if kind == PREDICTIONS else FEEDBACK_FIELDS)
    files = _list_files(store, model, kind, start_utc, end_utc) if start_utc < end_utc else []
    table = _concat(_read_tables(store, files), base)
    ts = table.column("ts")
    keep = pc.and_(pc.greater_equal(ts, start_utc), pc.less(ts, end_utc))
    return table.filter(keep)


def _frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    if "label" in df.columns:
        df["label"] = df["label"].astype("Int8")
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
    """Feedback rows with ``start <= ts < end``, ordered by ``ts``: columns ``request_id``, ``label`` (Int8),
    ``ts`` (UTC). With `latest_only`, one row per request id: its latest label (ties: the last written)."""
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

    Columns: the base columns of the module docstring, then ``feature.<name>`` columns (sorted), then, with
    `with_feedback`, ``label`` (Int8, <NA> when no label yet) and ``label_ts``: the latest feedback for the
    request id found in ``[start, end + feedback_horizon)`` (labels arrive after predictions; a label later than
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
    df["label"] = df["label"].astype("Int8")
    return df
