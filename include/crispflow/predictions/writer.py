"""The prediction store's writer: every prediction and feedback label of the model server, as partitioned Parquet.

Each file is written once and never rewritten: locally to a hidden temporary name (``.part-...tmp``,
fsynced) that is then renamed, on S3 as a single PUT; readers skip names starting with ``.`` (a process killed
mid-write may leave such a temporary file behind, never a partial ``part-*``). Compression: zstd. Several writers
(server workers, replicas) may share a root: file names never collide. Layout: `crispflow.predictions.store`;
columns: `crispflow.predictions.schema`. Each predictions part gets its entity index (:func:`entity_index`) written
the same way right after it: a part without an index (a crash in between, a failed index write, an older log) is
simply read whole by the erasure plan, so the index is never needed for correctness and a failed index write is
only logged, never retried (that would write the part's rows twice).

Writing (:class:`PredictionLog`): ``log()`` only appends the row dicts to a deque under a lock (it never waits on
I/O); a background thread builds the Arrow table and writes every ``flush_interval`` seconds or as soon as
``batch_rows`` rows are pending. Memory is bounded: at most ``max_pending_rows`` rows (queued + being written);
rows beyond it are dropped and counted in ``dropped``. A failed write keeps its rows (they stay within the bound)
and is retried with exponential backoff; ``write_errors`` counts failures; only the hour files that failed are
written again, so a retry never duplicates rows. ``close()`` (the server's shutdown hook: SIGTERM -> graceful
shutdown -> close) writes everything left, retrying until its timeout; an atexit hook closes a forgotten log.
"""

from __future__ import annotations

import atexit
import io
import logging
import math
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crispflow.governance.bloom import BloomFilter
from crispflow.lake import write_atomic
from crispflow.predictions.schema import (
    FEEDBACK,
    PREDICTIONS,
    PredictionLogError,
    check_model,
    feedback_table,
    prediction_table,
)
from crispflow.predictions.store import HOUR_US, INDEX_SUFFIX, new_part_name, open_store

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

INDEX_FP_RATE = 0.001  # the design false-positive rate of a part's entity index


def _parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def entity_index(table: pa.Table) -> bytes:
    """A predictions part's entity index (`INDEX_SUFFIX` beside it): a Bloom filter of its distinct non-null
    `entity` values at `INDEX_FP_RATE`, sized for them (~1.8 bytes per entity, at least 128 bytes, plus 44 of
    header and checksum). The same rows give the same bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column("entity").cast(pa.string()) if "entity" in table.column_names else pa.array([], pa.string())
    return BloomFilter.of(pc.unique(column).drop_null().to_pylist(), INDEX_FP_RATE).to_bytes()


def refresh_index(part: Any) -> Any:
    """After `part` (a predictions file) was rewritten, e.g. by an erasure: its entity index rebuilt from what it
    holds now, so the index no longer answers "maybe" for removed entities. Returns the index's path, or None when
    the part has no index (nothing is created)."""
    import pyarrow.parquet as pq

    index = part.with_name(part.name + INDEX_SUFFIX)
    if not (index.exists() and part.exists()):
        return None
    rebuilt = entity_index(pq.read_table(io.BytesIO(part.read_bytes()), columns=["entity"]))
    if index.read_bytes() != rebuilt:
        write_atomic(index, rebuilt)
    return index


def _hour_groups(table: pa.Table) -> list[tuple[datetime, Any]]:
    """(UTC hour, row indices) for each hour present in the table's `ts` column."""
    import numpy as np
    import pyarrow as pa

    micros = table.column("ts").cast(pa.int64()).to_numpy()
    hours = micros // HOUR_US
    unique, inverse = np.unique(hours, return_inverse=True)
    return [(datetime.fromtimestamp(int(h) * 3600, UTC), np.flatnonzero(inverse == i)) for i, h in enumerate(unique)]


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
        self.model = check_model(model)
        self._store = open_store(root, storage_options)
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
        """Parquet parts written (their entity indexes are not counted)."""
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

        Each row needs ``request_id`` (str) and ``ts`` (tz-aware datetime); the other columns and ``features``:
        `crispflow.predictions.schema`.
        Rows beyond ``max_pending_rows``, or logged after close(), are dropped and counted in ``dropped``.
        """
        self._check_rows(rows, "log")
        self._enqueue("predictions", rows)

    def log_feedback(self, rows: list[dict[str, Any]]) -> None:
        """Queue feedback rows ``{"request_id": str, "label": number, "ts": tz-aware datetime}``: the label is 0/1
        (binary), the class code (multiclass) or the observed value (regression), stored as float64. The server
        validates labels against the model's task; here any finite number (or bool) is accepted."""
        self._check_rows(rows, "log_feedback")
        for i, row in enumerate(rows):
            label = row.get("label")
            if not isinstance(label, int | float) or not math.isfinite(label):
                raise PredictionLogError(f"log_feedback: rows[{i}].label: must be a finite number, got {label!r}")
        self._enqueue("feedback", [{**row, "label": float(row["label"])} for row in rows])

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

    def _enqueue(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock:
            # resolved under the lock: _write_pending swaps the deques, so one taken before would lose rows
            queue = self._predictions if kind == "predictions" else self._feedback
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
            table = prediction_table(rows, self.model) if kind == PREDICTIONS else feedback_table(rows)
            groups = _hour_groups(table)
            parts = [(hour, idx, table.take(idx) if len(groups) > 1 else table) for hour, idx in groups]
            files = [(hour, idx, part, _parquet_bytes(part)) for hour, idx, part in parts]
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
        for hour, indices, part, data in files:
            relative = new_part_name(self.model, kind, hour)
            try:
                self._put(relative, data)
            except Exception as exc:
                error = error or f"{type(exc).__name__}: {exc}"
                kept.extend(rows[i] for i in indices)
                continue
            written += len(indices)
            with self._lock:
                self._files_written += 1
            if kind == PREDICTIONS:
                self._put_index(relative, part)
        return kept, written, error

    def _put_index(self, relative: str, part: pa.Table) -> None:
        """Write a predictions part's entity index after the part; a failure is logged (the part is read whole)."""
        try:
            self._put(relative + INDEX_SUFFIX, entity_index(part))
        except Exception as exc:
            log.warning(
                "prediction log %r: no entity index for %s (%s: %s); an erasure plan reads it whole",
                self.root,
                relative,
                type(exc).__name__,
                exc,
            )

    def _put(self, relative: str, data: bytes) -> None:
        """Publish one file atomically: `crispflow.lake.write_atomic` locally (private, fsync, rename), a single PUT on
        object stores."""
        target = self._store.join(relative)
        if self._store.local:
            write_atomic(Path(target), data)
        else:
            self._store.fs.pipe_file(target, data)
