"""The prediction store's writer (PredictionLog) on a local folder and on a flaky in-memory filesystem: rows in ==
rows read, one file per hour partition, typed feature columns, each part's entity index, bounds, close(),
concurrency, recovery from failing writes and input checks."""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from support.predictions import MODEL, T0, feedback, prediction

from crispflow.governance.bloom import BloomFilter
from crispflow.predictions.reader import read_predictions
from crispflow.predictions.schema import PREDICTION_COLUMNS, PredictionLogError
from crispflow.predictions.store import INDEX_SUFFIX
from crispflow.predictions.writer import INDEX_FP_RATE, PredictionLog


def parquet_files(root: Path) -> list[Path]:
    """Every file but the entity indexes (so a temporary file left behind would show)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(INDEX_SUFFIX))


def wait_until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# --- writing and reading back -----------------------------------------------------------------------------------------


def test_rows_in_equal_rows_read_with_typed_feature_columns(tmp_path: Path) -> None:
    rows = [prediction(i, T0 + timedelta(seconds=7 * i)) for i in range(1500)]  # spans 3 hours
    plog = PredictionLog(tmp_path, MODEL, batch_rows=400, flush_interval=0.05)
    plog.start()
    for start in range(0, len(rows), 10):
        plog.log(rows[start : start + 10])
    plog.close()

    assert (plog.written, plog.dropped, plog.pending, plog.write_errors) == (1500, 0, 0, 0)
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=3), with_feedback=False)
    assert list(df["request_id"]) == [r["request_id"] for r in rows]
    assert df["score"].tolist() == [r["score"] for r in rows]
    assert df["ts"].tolist() == [pd.Timestamp(r["ts"]) for r in rows]
    assert df["feature.int_rate"].tolist() == [r["features"]["int_rate"] for r in rows]
    assert list(df.columns[: len(PREDICTION_COLUMNS)]) == list(PREDICTION_COLUMNS)
    assert str(df["feature.int_rate"].dtype) == "float64"
    assert str(df["feature.term"].dtype) == "int64"
    assert df["feature.grade"].tolist() == [r["features"]["grade"] for r in rows]
    assert df["served"].dtype == bool
    names = [p.name for p in parquet_files(tmp_path)]
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)  # no temp files left
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in parquet_files(tmp_path))  # private files
    assert all(d.stat().st_mode & 0o777 == 0o700 for d in {p.parent for p in parquet_files(tmp_path)})


def test_a_batch_spanning_an_hour_boundary_writes_one_file_per_hour(tmp_path: Path) -> None:
    boundary = T0 + timedelta(hours=1)
    rows = [prediction(i, boundary + timedelta(seconds=i - 5)) for i in range(10)]  # 5 before, 5 after
    plog = PredictionLog(tmp_path, MODEL)
    plog.log(rows)
    plog.flush()

    files = parquet_files(tmp_path)
    parts = sorted(p.relative_to(tmp_path / MODEL / "predictions").parent.as_posix() for p in files)
    assert parts == ["date=2026-03-01/hour=09", "date=2026-03-01/hour=10"]
    before = read_predictions(tmp_path, MODEL, T0, boundary, with_feedback=False)
    after = read_predictions(tmp_path, MODEL, boundary, boundary + timedelta(hours=1), with_feedback=False)
    assert before["request_id"].tolist() == [f"req-{i}" for i in range(5)]
    assert after["request_id"].tolist() == [f"req-{i}" for i in range(5, 10)]
    plog.close()


def test_each_predictions_part_has_an_entity_index_holding_its_entities(tmp_path: Path) -> None:
    rows = [prediction(i, T0 + timedelta(minutes=i)) for i in range(90)]  # two hours, entities cust-0..cust-6
    rows += [prediction(90, T0, entity=None)]
    plog = PredictionLog(tmp_path, MODEL)
    plog.log(rows)
    plog.log_feedback([feedback("req-1", 1, T0)])
    plog.close()

    parts = [p for p in parquet_files(tmp_path) if "/predictions/" in p.as_posix()]
    assert len(parts) == 2 and plog.files_written == 3  # two hours of predictions, one of feedback: no index counted
    for part in parts:
        index = part.with_name(part.name + INDEX_SUFFIX)
        assert index.stat().st_mode & 0o777 == 0o600
        bloom = BloomFilter.from_bytes(index.read_bytes())
        entities = set(pq.read_table(part).column("entity").drop_null().to_pylist())
        assert bloom.might_contain(sorted(entities)).all()  # never a false negative
        assert (bloom.items, bloom.fp_rate) == (len(entities), INDEX_FP_RATE)  # sized for the distinct entities
        assert bloom.might_contain([f"nobody-{i}" for i in range(1000)]).mean() < 0.01  # and says "no" to others
    indexes = sorted(p for p in tmp_path.rglob("*") if p.name.endswith(INDEX_SUFFIX))
    assert [p.name for p in indexes] == [p.name + INDEX_SUFFIX for p in parts]  # feedback has no entity: no index


def test_a_non_utc_timestamp_is_partitioned_by_its_utc_hour(tmp_path: Path) -> None:
    plus2 = timezone(timedelta(hours=2))
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(1, datetime(2026, 3, 1, 0, 30, tzinfo=plus2))])  # = 2026-02-28 22:30 UTC
    plog.close()
    (file,) = parquet_files(tmp_path)
    assert file.parent.as_posix().endswith("date=2026-02-28/hour=22")
    df = read_predictions(tmp_path, MODEL, datetime(2026, 2, 28, 22, tzinfo=UTC), datetime(2026, 2, 28, 23, tzinfo=UTC))
    assert df["ts"].tolist() == [pd.Timestamp("2026-02-28 22:30", tz="UTC")]


def test_features_with_mixed_or_nested_values_become_strings(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log(
        [
            prediction(1, T0, features={"mixed": True, "nested": {"a": [1, 2]}, "big": 2**70, "n": 1}),
            prediction(2, T0, features={"mixed": 1, "nested": None, "big": 3}),
        ]
    )
    plog.flush()
    plog.log(
        [
            prediction(3, T0 + timedelta(minutes=1), features={"n": 2.5}),
            prediction(4, T0 + timedelta(minutes=2), features={"n": "unknown"}),
        ]
    )
    plog.close()
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1), with_feedback=False)
    assert df["feature.mixed"].tolist()[:2] == ["True", "1"]
    assert df["feature.nested"].tolist()[0] == '{"a": [1, 2]}'
    assert df["feature.big"].tolist()[:2] == [str(2**70), "3"]
    # 'n' is int in the first file and float/string in the second: read back as strings
    assert df["feature.n"].tolist()[0] == "1"
    assert df["feature.n"].tolist()[2:] == ["2.5", "unknown"]


def test_version_numbers_become_strings_and_missing_fields_nulls(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([{"request_id": "r", "ts": T0, "version": 7, "score": None}])
    plog.close()
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1))
    row = df.iloc[0]
    assert (row["version"], row["model"]) == ("7", MODEL)
    assert pd.isna(row["score"]) and pd.isna(row["entity"]) and pd.isna(row["label"])


# --- bounds, close, concurrency ---------------------------------------------------------------------------------------


def test_rows_beyond_the_bound_are_dropped_and_counted_without_blocking(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL, max_pending_rows=100, batch_rows=1000)  # writer not started
    plog.log([prediction(i, T0) for i in range(60)])
    plog.log([prediction(i, T0) for i in range(60, 120)])  # 40 fit, 20 dropped
    plog.log_feedback([feedback("req-1", 1, T0)])  # the bound counts feedback too
    assert (plog.pending, plog.dropped) == (100, 21)
    plog.close()
    assert (plog.written, plog.dropped, plog.pending) == (100, 21, 0)
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1), with_feedback=False)
    assert df["request_id"].tolist() == sorted(f"req-{i}" for i in range(100))  # the oldest rows were kept


class BlockingLog(PredictionLog):
    """A log whose writes hang until released: shows that log() never waits for the writer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.entered = threading.Event()

    def _put(self, relative: str, data: bytes) -> None:
        self.entered.set()
        self.release.wait(30)
        super()._put(relative, data)


def test_log_does_not_wait_for_a_stuck_write(tmp_path: Path) -> None:
    plog = BlockingLog(tmp_path, MODEL, batch_rows=10, flush_interval=0.01, max_pending_rows=50)
    plog.start()
    plog.log([prediction(i, T0) for i in range(10)])
    assert plog.entered.wait(10)  # the writer is inside a write that does not return

    done = threading.Event()

    def hammer() -> None:
        for i in range(100):
            plog.log([prediction(1000 + i, T0)])
        done.set()

    threading.Thread(target=hammer, daemon=True).start()
    assert done.wait(10), "log() blocked behind the writer"
    assert plog.pending == 50 and plog.dropped == 60  # 10 in flight + 40 queued; the rest dropped
    plog.release.set()
    plog.close()
    assert (plog.written, plog.dropped) == (50, 60)


def test_close_flushes_is_idempotent_and_later_rows_are_counted_as_dropped(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL, batch_rows=10_000, flush_interval=3600)
    plog.start()
    plog.log([prediction(i, T0) for i in range(25)])
    plog.log_feedback([feedback("req-3", 1, T0)])
    closers = [threading.Thread(target=plog.close) for _ in range(3)]
    for t in closers:
        t.start()
    for t in closers:
        t.join(30)
    plog.close()  # once more, from this thread
    assert (plog.written, plog.feedback_written, plog.pending, plog.dropped) == (25, 1, 0, 0)
    assert plog.files_written == 2
    assert not plog._thread.is_alive()  # type: ignore[union-attr]
    plog.log([prediction(99, T0)])  # after close: counted, never raised
    assert plog.dropped == 1
    with pytest.raises(PredictionLogError, match="closed"):
        plog.start()
    assert len(read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1))) == 25


def test_concurrent_log_from_eight_threads_loses_nothing(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL, batch_rows=700, flush_interval=0.02)
    plog.start()
    barrier = threading.Barrier(8)

    def client(t: int) -> None:
        barrier.wait()
        for b in range(200):
            base = t * 10_000 + b * 5
            plog.log([prediction(base + k, T0 + timedelta(seconds=(base + k) % 7200)) for k in range(5)])
            if b % 50 == 0:
                plog.log_feedback([feedback(f"req-{base}", b % 2, T0 + timedelta(hours=2))])

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    plog.close()
    assert (plog.written, plog.feedback_written, plog.dropped, plog.write_errors) == (8000, 32, 0, 0)
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=2))
    assert len(df) == 8000 and df["request_id"].is_unique
    assert df["label"].notna().sum() == 32


# --- failures ---------------------------------------------------------------------------------------------------------


def test_a_blocked_local_root_recovers_without_losing_rows(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / MODEL).write_bytes(b"")  # a file where the model's folder must go: every write fails
    plog = PredictionLog(root, MODEL, batch_rows=5, flush_interval=0.01, retry_initial=0.01, retry_max=0.05)
    plog.start()
    plog.log([prediction(i, T0 + timedelta(minutes=i)) for i in range(30)])
    wait_until(lambda: plog.write_errors >= 3)
    assert plog.written == 0 and plog.pending == 30
    with pytest.raises(PredictionLogError, match="write failed, rows kept for retry"):
        plog.flush()
    (root / MODEL).unlink()  # the store comes back
    plog.log([prediction(i, T0 + timedelta(minutes=i)) for i in range(30, 40)])
    wait_until(lambda: plog.written == 40)
    plog.close()
    assert (plog.dropped, plog.pending) == (0, 0)
    df = read_predictions(root, MODEL, T0, T0 + timedelta(hours=1))
    assert df["request_id"].tolist() == [f"req-{i}" for i in range(40)]


class FlakyMemoryFS(MemoryFileSystem):
    """An in-memory filesystem whose first `fail_writes` writes raise, like an object store that is down."""

    protocol = "flakymem"
    store: dict[str, Any] = {}  # its own store, not MemoryFileSystem's
    pseudo_dirs = [""]
    fail_writes = 0
    attempts = 0

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        return super()._strip_protocol("memory://" + text.removeprefix("flakymem://"))

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        type(self).attempts += 1
        if type(self).fail_writes > 0:
            type(self).fail_writes -= 1
            raise ConnectionError("simulated outage of the object store")
        super().pipe_file(path, value, *args, **kwargs)


@pytest.fixture
def flaky_root() -> Any:
    from upath import UPath

    fsspec.register_implementation("flakymem", FlakyMemoryFS, clobber=True)
    FlakyMemoryFS.store.clear()
    FlakyMemoryFS.fail_writes = FlakyMemoryFS.attempts = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UPath: "filesystem not explicitly implemented"
        yield UPath("flakymem://bucket/predictions")


def test_a_failing_filesystem_then_recovering_loses_nothing(flaky_root: Any) -> None:
    FlakyMemoryFS.fail_writes = 4
    plog = PredictionLog(flaky_root, MODEL, batch_rows=50, flush_interval=0.01, retry_initial=0.01)
    plog.start()
    for i in range(0, 200, 20):
        plog.log([prediction(k, T0 + timedelta(seconds=k)) for k in range(i, i + 20)])
    plog.log_feedback([feedback("req-3", 1, T0 + timedelta(minutes=5))])
    plog.close(timeout=20)
    assert (plog.written, plog.feedback_written, plog.dropped, plog.pending) == (200, 1, 0, 0)
    assert plog.write_errors >= 1 and FlakyMemoryFS.attempts >= 5
    df = read_predictions(flaky_root, MODEL, T0, T0 + timedelta(hours=1))
    assert df["request_id"].tolist() == [f"req-{k}" for k in range(200)]  # once each: no duplicate after retry
    assert df.loc[df["request_id"] == "req-3", "label"].tolist() == [1]


def test_rows_logged_while_the_writer_swaps_its_queues_are_kept(tmp_path: Path) -> None:
    """A log call that waits on the lock while the writer swaps the queues (as _write_pending does) must put its
    rows in the new queue, not in the one just taken away."""
    plog = PredictionLog(str(tmp_path), MODEL)
    with plog._lock:
        logger = threading.Thread(target=plog.log_feedback, args=([feedback("req-1", 1, T0)],))
        logger.start()
        time.sleep(0.05)  # the logger now waits on the lock
        plog._feedback = deque()
    logger.join(5)
    plog.close(timeout=5)
    assert (plog.feedback_written, plog.dropped, plog.pending) == (1, 0, 0)


def test_a_store_that_never_recovers_is_given_up_at_the_close_deadline(flaky_root: Any) -> None:
    FlakyMemoryFS.fail_writes = 10**9
    plog = PredictionLog(flaky_root, MODEL, flush_interval=0.01, retry_initial=0.01, retry_max=0.02)
    plog.start()
    plog.log([prediction(i, T0) for i in range(12)])
    closer = threading.Thread(target=plog.close, kwargs={"timeout": 0.3})
    closer.start()
    closer.join(15)
    assert not closer.is_alive()
    assert (plog.written, plog.pending, plog.dropped) == (0, 0, 12)
    assert plog.write_errors >= 2


def test_only_the_failed_partition_is_retried(flaky_root: Any) -> None:
    plog = PredictionLog(flaky_root, MODEL)
    rows = [prediction(1, T0), prediction(2, T0 + timedelta(hours=1))]
    FlakyMemoryFS.fail_writes = 0
    plog.flush()  # nothing pending: no write at all
    assert FlakyMemoryFS.attempts == 0
    plog.log(rows)

    class FailSecond:
        calls = 0

    original = FlakyMemoryFS.pipe_file

    def second_fails(self: FlakyMemoryFS, path: str, value: bytes, *a: Any, **k: Any) -> None:
        is_part = not path.endswith(INDEX_SUFFIX)  # the second part fails (an index write is not a part)
        FailSecond.calls += is_part
        if is_part and FailSecond.calls == 2:
            raise ConnectionError("simulated outage")
        original(self, path, value, *a, **k)

    FlakyMemoryFS.pipe_file = second_fails  # type: ignore[method-assign]
    try:
        with pytest.raises(PredictionLogError):
            plog.flush()
        assert (plog.written, plog.pending) == (1, 1)
        plog.flush()
    finally:
        FlakyMemoryFS.pipe_file = original  # type: ignore[method-assign]
    plog.close()
    df = read_predictions(flaky_root, MODEL, T0, T0 + timedelta(hours=2), with_feedback=False)
    assert df["request_id"].tolist() == ["req-1", "req-2"]


def test_a_failed_index_write_keeps_the_part_and_is_not_retried(flaky_root: Any) -> None:
    original = FlakyMemoryFS.pipe_file

    def index_fails(self: FlakyMemoryFS, path: str, value: bytes, *a: Any, **k: Any) -> None:
        if path.endswith(INDEX_SUFFIX):
            raise ConnectionError("simulated outage")
        original(self, path, value, *a, **k)

    plog = PredictionLog(flaky_root, MODEL)
    plog.log([prediction(1, T0)])
    FlakyMemoryFS.pipe_file = index_fails  # type: ignore[method-assign]
    try:
        plog.flush()  # no error: the rows are stored, the part is read whole by an erasure plan
    finally:
        FlakyMemoryFS.pipe_file = original  # type: ignore[method-assign]
    plog.close()
    assert (plog.written, plog.write_errors, plog.files_written) == (1, 0, 1)
    assert not [p for p in FlakyMemoryFS.store if p.endswith(INDEX_SUFFIX)]
    df = read_predictions(flaky_root, MODEL, T0, T0 + timedelta(hours=1), with_feedback=False)
    assert df["request_id"].tolist() == ["req-1"]


# --- input checks -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "../etc"}, "model: must be a registered model name"),
        ({"model": "a/b"}, "model: must be a registered model name"),
        ({"model": ""}, "model: must be"),
        ({"batch_rows": 0}, "batch_rows: must be an integer >= 1"),
        ({"max_pending_rows": 2.5}, "max_pending_rows: must be an integer"),
        ({"flush_interval": 0}, "flush_interval: must be a number > 0"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args = {"model": MODEL, **kwargs}
    with pytest.raises(PredictionLogError, match=message):
        PredictionLog(tmp_path, args.pop("model"), **args)


@pytest.mark.parametrize(
    ("method", "rows", "message"),
    [
        ("log", {"request_id": "r"}, "rows must be a list"),
        ("log", [("r", T0)], r"rows\[0\] must be a dict"),
        ("log", [{"ts": T0}], r"rows\[0\]\.request_id: must be a non-empty string"),
        ("log", [{"request_id": "r", "ts": datetime(2026, 3, 1)}], r"rows\[0\]\.ts: must be a timezone-aware"),
        ("log_feedback", [{"request_id": "r", "ts": T0, "label": "1"}], r"rows\[0\]\.label: must be a finite number"),
        ("log_feedback", [{"request_id": "r", "ts": T0, "label": float("nan")}],
         r"rows\[0\]\.label: must be a finite number"),
        ("log_feedback", [{"request_id": "r", "ts": T0, "label": None}], r"rows\[0\]\.label: must be a finite number"),
    ],
)
def test_bad_rows_are_refused_with_the_field_named(tmp_path: Path, method: str, rows: Any, message: str) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    with pytest.raises(PredictionLogError, match=message):
        getattr(plog, method)(rows)
    assert plog.pending == 0


def test_storage_options_with_a_upath_root_are_refused(flaky_root: Any) -> None:
    with pytest.raises(PredictionLogError, match="storage_options: must be None"):
        PredictionLog(flaky_root, MODEL, storage_options={"key": "k"})
