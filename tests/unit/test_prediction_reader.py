"""The prediction store's readers (read_predictions, read_feedback): only the partitions of the window are read,
types reconciled across files, the feedback join, empty and bad windows."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support.predictions import MODEL, T0, feedback, prediction

from crispflow.predictions.reader import read_feedback, read_predictions
from crispflow.predictions.schema import FEEDBACK_COLUMNS, PREDICTION_COLUMNS, PredictionLogError
from crispflow.predictions.writer import PredictionLog

# --- windows and partitions -------------------------------------------------------------------------------------------


def test_only_partitions_overlapping_the_window_are_read(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(i, T0 + timedelta(minutes=30 * i)) for i in range(6)])  # 09:00 .. 11:30
    plog.close()
    # A corrupt file in a partition outside the window must not even be opened.
    outside = tmp_path / MODEL / "predictions" / "date=2026-03-01" / "hour=13"
    outside.mkdir(parents=True)
    (outside / "part-corrupt.parquet").write_bytes(b"not parquet")

    df = read_predictions(tmp_path, MODEL, T0 + timedelta(minutes=45), T0 + timedelta(hours=2, minutes=1))
    assert df["request_id"].tolist() == ["req-2", "req-3", "req-4"]  # 10:00, 10:30, 11:00; start/end honoured
    with pytest.raises(PredictionLogError, match=r"part-corrupt\.parquet.*cannot be read"):
        read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=5))


def test_whole_days_and_partial_days_are_both_found(tmp_path: Path) -> None:
    days = [T0 + timedelta(days=d, hours=h) for d in range(3) for h in (0, 5, 14)]
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(i, ts) for i, ts in enumerate(days)])
    plog.close()
    start = T0 + timedelta(hours=5)  # partial first day, one whole day, partial last day
    df = read_predictions(tmp_path, MODEL, start, T0 + timedelta(days=2, hours=6), with_feedback=False)
    assert df["ts"].tolist() == [pd.Timestamp(ts) for ts in days if start <= ts < T0 + timedelta(days=2, hours=6)]


def test_int_and_float_features_across_files_read_back_as_float(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(1, T0, features={"x": 1})])
    plog.flush()
    plog.log([prediction(2, T0 + timedelta(seconds=1), features={"x": 2.5})])
    plog.close()
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1), with_feedback=False)
    assert df["feature.x"].tolist() == [1.0, 2.5]
    assert str(df["feature.x"].dtype) == "float64"


def test_empty_window_gives_an_empty_frame_with_the_expected_columns(tmp_path: Path) -> None:
    df = read_predictions(tmp_path / "nothing-here", MODEL, T0, T0 + timedelta(hours=2))
    assert df.empty
    assert list(df.columns) == [*PREDICTION_COLUMNS, "label", "label_ts"]
    assert str(df["ts"].dtype) == "datetime64[us, UTC]" and str(df["label"].dtype) == "float64"
    assert str(df["label_ts"].dtype) == "datetime64[us, UTC]" and str(df["score"].dtype) == "float64"
    assert read_predictions(tmp_path, MODEL, T0, T0).empty  # start == end: an empty window
    fb = read_feedback(tmp_path, MODEL, T0, T0 + timedelta(hours=1))
    assert fb.empty and list(fb.columns) == list(FEEDBACK_COLUMNS)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2026, 3, 1), T0, "start: must be timezone-aware"),
        (T0, "2026-03-02", "end: must be a datetime"),
        (T0, T0 - timedelta(seconds=1), "end: must not be before start"),
    ],
)
def test_bad_windows_are_refused(tmp_path: Path, start: Any, end: Any, message: str) -> None:
    with pytest.raises(PredictionLogError, match=message):
        read_predictions(tmp_path, MODEL, start, end)


# --- feedback ---------------------------------------------------------------------------------------------------------


def test_feedback_join_takes_the_latest_label_within_the_horizon(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(i, T0 + timedelta(minutes=i)) for i in range(5)])
    plog.log_feedback(
        [
            feedback("req-0", 1, T0 + timedelta(minutes=10)),
            feedback("req-1", 0, T0 + timedelta(minutes=20)),  # superseded by a later correction
            feedback("req-1", 1, T0 + timedelta(hours=5)),  # late: after the window, within the horizon
            feedback("req-2", 1, T0 + timedelta(days=3)),  # beyond the default one-day horizon
            feedback("req-9", 1, T0 + timedelta(minutes=1)),  # unknown request: not a row of its own
        ]
    )
    plog.close()
    end = T0 + timedelta(hours=1)

    df = read_predictions(tmp_path, MODEL, T0, end)
    assert df["request_id"].tolist() == [f"req-{i}" for i in range(5)]
    assert df["label"].tolist()[:2] == [1.0, 1.0] and df["label"].iloc[2:].isna().all()
    assert str(df["label"].dtype) == "float64"
    assert df["label_ts"].tolist()[:2] == [
        pd.Timestamp(T0 + timedelta(minutes=10)),
        pd.Timestamp(T0 + timedelta(hours=5)),
    ]
    longer = read_predictions(tmp_path, MODEL, T0, end, feedback_horizon=timedelta(days=4))
    assert longer["label"].tolist()[:3] == [1.0, 1.0, 1.0] and longer["label"].iloc[3:].isna().all()
    bare = read_predictions(tmp_path, MODEL, T0, end, with_feedback=False)
    assert "label" not in bare.columns and "label_ts" not in bare.columns

    raw = read_feedback(tmp_path, MODEL, T0, T0 + timedelta(days=4))
    assert raw["request_id"].tolist() == ["req-9", "req-0", "req-1", "req-1", "req-2"]
    assert list(raw.columns) == list(FEEDBACK_COLUMNS)
    latest = read_feedback(tmp_path, MODEL, T0, T0 + timedelta(days=4), latest_only=True)
    assert dict(zip(latest["request_id"], latest["label"], strict=True)) == {
        "req-9": 1,
        "req-0": 1,
        "req-1": 1,
        "req-2": 1,
    }


def test_equal_feedback_timestamps_the_last_written_wins(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(1, T0)])
    plog.log_feedback([feedback("req-1", 1, T0 + timedelta(minutes=1))])
    plog.flush()
    plog.log_feedback([feedback("req-1", 0, T0 + timedelta(minutes=1))])
    plog.close()
    assert read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1))["label"].tolist() == [0]


def test_a_shadow_row_shares_the_label_of_its_request(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(1, T0), prediction(1, T0, alias="shadow", served=False, version="4")])
    plog.log_feedback([feedback("req-1", 1, T0 + timedelta(minutes=3))])
    plog.close()
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1))
    assert sorted(zip(df["alias"], df["label"], strict=True)) == [("champion", 1), ("shadow", 1)]
