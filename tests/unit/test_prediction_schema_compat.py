"""The prediction store's task columns (predicted, probabilities, interval_low/high; float64 feedback labels)
round-trip, and files written before them (no task columns, int8 labels) still read, alone and mixed with new files."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from support.predictions import MODEL, T0, feedback, prediction

from crispflow.predictions.reader import read_feedback, read_predictions
from crispflow.predictions.schema import FEEDBACK_COLUMNS, PREDICTION_COLUMNS
from crispflow.predictions.store import new_part_name
from crispflow.predictions.writer import PredictionLog

OLD_PREDICTION_COLUMNS = ("request_id", "ts", "model", "version", "alias", "served", "entity", "score", "latency_ms",
                          "status")


def _write_old_files(root: Path) -> None:
    """A prediction file and a feedback file exactly as the binary-only writer made them (int8 labels)."""
    ts = pa.array([T0 + timedelta(minutes=1)], pa.timestamp("us", tz="UTC"))
    predictions = pa.table({
        "request_id": ["old-1"], "ts": ts, "model": [MODEL], "version": ["1"], "alias": ["champion"],
        "served": [True], "entity": [None], "score": [0.7], "latency_ms": [2.0], "status": ["ok"],
        "feature.x": [1.5],
    })
    fb = pa.table({"request_id": ["old-1"], "label": pa.array([1], pa.int8()),
                   "ts": pa.array([T0 + timedelta(minutes=2)], pa.timestamp("us", tz="UTC"))})
    for kind, table in (("predictions", predictions), ("feedback", fb)):
        target = root / new_part_name(MODEL, kind, T0)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)


def test_the_task_columns_follow_the_old_columns() -> None:
    assert PREDICTION_COLUMNS[: len(OLD_PREDICTION_COLUMNS)] == OLD_PREDICTION_COLUMNS
    assert PREDICTION_COLUMNS[len(OLD_PREDICTION_COLUMNS):] == ("predicted", "probabilities", "interval_low",
                                                                "interval_high", "explanation")
    assert FEEDBACK_COLUMNS == ("request_id", "label", "ts", "sender")


def test_multiclass_and_regression_rows_round_trip(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([
        prediction(1, T0, score=0.6, predicted="gold", probabilities=[0.1, 0.3, 0.6]),
        prediction(2, T0 + timedelta(seconds=1), score=123.5, interval_low=100.0, interval_high=147.0),
        prediction(3, T0 + timedelta(seconds=2)),  # binary: no task columns
    ])
    plog.log_feedback([feedback("req-1", 2, T0 + timedelta(minutes=1)),  # multiclass: the class code
                       feedback("req-2", 130.25, T0 + timedelta(minutes=1)),  # regression: the observed value
                       feedback("req-3", True, T0 + timedelta(minutes=1))])
    plog.close()
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1)).set_index("request_id")
    assert df.loc["req-1", "predicted"] == "gold" and list(df.loc["req-1", "probabilities"]) == [0.1, 0.3, 0.6]
    assert math.isnan(df.loc["req-1", "interval_low"])
    assert (df.loc["req-2", "interval_low"], df.loc["req-2", "interval_high"]) == (100.0, 147.0)
    assert df.loc["req-2", "probabilities"] is None and pd.isna(df.loc["req-2", "predicted"])
    assert df["label"].to_dict() == {"req-1": 2.0, "req-2": 130.25, "req-3": 1.0}
    assert str(df["label"].dtype) == "float64"


def test_old_files_read_with_null_task_columns_and_float_labels(tmp_path: Path) -> None:
    _write_old_files(tmp_path)
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1))
    assert list(df.columns[: len(PREDICTION_COLUMNS)]) == list(PREDICTION_COLUMNS)
    row = df.iloc[0]
    assert row["request_id"] == "old-1" and row["score"] == 0.7 and row["feature.x"] == 1.5
    assert pd.isna(row["predicted"]) and row["probabilities"] is None
    assert math.isnan(row["interval_low"]) and math.isnan(row["interval_high"]) and pd.isna(row["explanation"])
    assert row["label"] == 1.0 and str(df["label"].dtype) == "float64"
    fb = read_feedback(tmp_path, MODEL, T0, T0 + timedelta(hours=1))
    assert fb["label"].tolist() == [1.0] and str(fb["label"].dtype) == "float64"


def test_old_and_new_files_read_together(tmp_path: Path) -> None:
    _write_old_files(tmp_path)
    plog = PredictionLog(tmp_path, MODEL)
    plog.log([prediction(1, T0 + timedelta(minutes=5), predicted="b", probabilities=[0.2, 0.8], score=0.8)])
    plog.log_feedback([feedback("req-1", 0, T0 + timedelta(minutes=6))])
    plog.close()
    df = read_predictions(tmp_path, MODEL, T0, T0 + timedelta(hours=1)).set_index("request_id")
    assert df.loc["old-1", "probabilities"] is None and list(df.loc["req-1", "probabilities"]) == [0.2, 0.8]
    assert df["label"].to_dict() == {"old-1": 1.0, "req-1": 0.0}
    assert pd.isna(df.loc["req-1", "feature.x"])
