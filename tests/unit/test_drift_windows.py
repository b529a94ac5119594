"""One monitoring window: log rows → window data → drift report → stored report and summary (no Airflow, no MLflow).

The prediction log is written and read with the real PredictionLog; the reference profile of the demo data's
first half year; later months as windows (months 10-12 are the demo's shifted ones).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crispflow.model.features import features, labels
from crispflow.monitoring import DriftInputError, DriftSettings, build_profile
from crispflow.monitoring.store import read_windows
from crispflow.monitoring.windows import (
    display_path,
    drift_of_window,
    judge_window,
    report_location,
    window_data,
)
from crispflow.predictions.reader import read_predictions
from crispflow.predictions.writer import PredictionLog
from crispflow.settings import project_root
from crispflow.spec import load_spec

MODEL = "crispflow-t_windows"
T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def spec():
    return load_spec("lending_club")


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")


def fake_score(frame: pd.DataFrame) -> np.ndarray:
    """A fixed monotone score of the interest rate (a stand-in model: these tests are about the plumbing)."""
    return 1 / (1 + np.exp(-(frame["int_rate"].to_numpy(dtype=float) - 15) / 4))


@pytest.fixture(scope="module")
def profile(spec, loans) -> dict:
    train = loans[loans["application_month"].dt.month <= 6]
    return build_profile(spec, features(spec, train), scores=fake_score(train), labels=labels(spec, train))


def months(loans: pd.DataFrame, first: int, last: int, n: int, seed: int) -> pd.DataFrame:
    part = loans[loans["application_month"].dt.month.between(first, last)]
    return part.sample(n, random_state=seed).reset_index(drop=True)


def log_rows(spec, frame: pd.DataFrame, start: datetime, *, version: str = "1", alias: str = "champion",
             served: bool = True, status: str = "ok", prefix: str = "r") -> list[dict]:
    x = features(spec, frame)
    scores = fake_score(frame)
    step = HOUR / (len(frame) + 1)
    return [{"request_id": f"{prefix}-{i}", "ts": start + step * (i + 1), "model": MODEL, "version": version,
             "alias": alias, "served": served, "entity": str(frame["loan_id"].iat[i]), "score": float(scores[i]),
             "latency_ms": 3.0, "status": status, "features": x.iloc[i].to_dict()} for i in range(len(frame))]


def write_log(root: Path, rows: list[dict], feedback: list[dict] | None = None) -> None:
    plog = PredictionLog(root, MODEL)
    plog.log(rows)
    if feedback:
        plog.log_feedback(feedback)
    plog.close()


def test_window_data_keeps_only_what_the_version_served(tmp_path: Path, spec, loans) -> None:
    sample = months(loans, 7, 9, 40, seed=1)
    rows = (log_rows(spec, sample[:20], T0, prefix="ok")
            + log_rows(spec, sample[20:25], T0, status="error", prefix="err")
            + log_rows(spec, sample[25:30], T0, alias="shadow", served=False, prefix="shadow")
            + log_rows(spec, sample[30:35], T0, version="2", alias="canary", prefix="canary")
            + log_rows(spec, sample[35:40], T0, version="1", alias="previous", prefix="prev"))
    write_log(tmp_path, rows, [{"request_id": "ok-3", "label": 1, "ts": T0 + HOUR}])
    log = read_predictions(tmp_path, MODEL, T0, T0 + HOUR)

    data = window_data(log, version="1", alias="champion")
    assert data.rows == 20 and data.labelled_rows == 1
    assert list(data.features.columns) == sorted(spec.feature_columns)  # the `feature.` prefix stripped
    assert data.features["int_rate"].tolist() == sample["int_rate"][:20].tolist()
    np.testing.assert_allclose(data.scores, fake_score(sample[:20]))
    assert np.isnan(data.labels).sum() == 19 and data.labels[3] == 1.0
    assert window_data(log, version="2", alias="canary").rows == 5
    assert window_data(log, version="1").rows == 25  # any alias the version served under
    assert window_data(log, version="9", alias="champion").rows == 0


def test_drifted_and_stable_windows_are_told_apart_and_stored(tmp_path: Path, spec, loans, profile) -> None:
    stable, shifted = months(loans, 7, 9, 400, seed=2), months(loans, 10, 12, 400, seed=3)
    write_log(tmp_path, log_rows(spec, stable, T0, prefix="a") + log_rows(spec, shifted, T0 + HOUR, prefix="b"))
    summaries = []
    for start in (T0, T0 + HOUR):
        log = read_predictions(tmp_path, MODEL, start, start + HOUR)
        summary, report, page = judge_window(profile, log, root=tmp_path, model=MODEL, alias="champion",
                                             version="1", start=start, end=start + HOUR)
        summaries.append(summary)
        where = Path(summary["report"])
        assert where == report_location(tmp_path, MODEL, "champion", start + HOUR)
        assert json.loads(where.read_text())["status"] == report["status"]
        assert (where.parent / "report.html").read_text() == page and "<svg" in page
    calm, drift = summaries
    assert calm["status"] == "no_drift" and not calm["drift"] and calm["rows"] == 400
    assert drift["status"] == "drift" and drift["drift"]
    assert "int_rate" in drift["drifted_features"] and drift["statistics"]["int_rate"]["psi"] > 0.1
    # every feature's statistics, drifted or not (the UI's heatmap), next to the drifted-only `statistics`
    assert sorted(drift["feature_statistics"]) == sorted(spec.feature_columns)
    assert {n for n, s in drift["feature_statistics"].items() if s["drifted"]} == set(drift["drifted_features"])
    assert drift["prediction_drift"]
    assert read_windows(tmp_path, MODEL) == summaries  # what the sensor reads, oldest first


def test_an_empty_window_is_an_explicit_insufficient_data_summary(tmp_path: Path, profile) -> None:
    log = read_predictions(tmp_path, MODEL, T0, T0 + HOUR)  # nothing logged at all
    summary, report, _ = judge_window(profile, log, root=tmp_path, model=MODEL, alias="champion", version="1",
                                      start=T0, end=T0 + HOUR)
    assert summary["status"] == "insufficient_data" and summary["rows"] == 0 and not summary["drift"]
    assert report["reasons"] and Path(summary["report"]).exists()
    assert read_windows(tmp_path, MODEL) == [summary]


def test_rerunning_a_window_rewrites_the_same_content(tmp_path: Path, spec, loans, profile) -> None:
    write_log(tmp_path, log_rows(spec, months(loans, 10, 12, 200, seed=4), T0))
    log = read_predictions(tmp_path, MODEL, T0, T0 + HOUR)
    kwargs = {"root": tmp_path, "model": MODEL, "alias": "champion", "version": "1", "start": T0, "end": T0 + HOUR}
    first = judge_window(profile, log, **kwargs).summary
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    second = judge_window(profile, log, **kwargs).summary
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second and before == after


def test_partial_feedback_judges_labels_on_the_labelled_rows(spec, loans, profile) -> None:
    sample = months(loans, 7, 9, 600, seed=5)
    log = pd.DataFrame({"request_id": [f"r{i}" for i in range(600)], "version": "1", "alias": "champion",
                        "served": True, "status": "ok", "score": fake_score(sample)})
    for name, column in features(spec, sample).items():
        log[f"feature.{name}"] = column.to_numpy()
    y = labels(spec, sample).astype("int8")
    # the first 300 rows have feedback, and every one of them is "bad": the label rate has clearly drifted
    log["label"] = pd.array([1] * 300 + [pd.NA] * 300, dtype="Int8")
    report = drift_of_window(profile, window_data(log, version="1"))
    assert report["feedback"] == {"labelled_rows": 300, "family": "labelled_rows"}
    assert report["label"]["rows"] == 300 and report["label"]["current_rate"] == 1.0 and report["label"]["drifted"]
    assert report["drift"] and any(r.startswith("label rate") for r in report["reasons"])
    assert report["drifted_features"] == []  # the features themselves are from the stable months

    log["label"] = pd.array(y, dtype="Int8")  # every row labelled, true labels: one joint family, no drift
    joint = drift_of_window(profile, window_data(log, version="1"))
    assert joint["feedback"] == {"labelled_rows": 600, "family": "joint"}
    assert not joint["drift"] and joint["performance"]["metrics"]["roc_auc"]["current"] is not None


def test_a_feature_no_request_carried_is_judged_as_missing(spec, loans, profile) -> None:
    sample = months(loans, 7, 9, 300, seed=6)
    log = pd.DataFrame({"version": "1", "alias": "champion", "served": True, "status": "ok",
                        "score": fake_score(sample)})
    for name, column in features(spec, sample).drop(columns=["revol_util"]).items():
        log[f"feature.{name}"] = column.to_numpy()
    report = drift_of_window(profile, window_data(log, version="1"))
    assert "revol_util" in report["drifted_features"]
    assert report["features"]["revol_util"]["missing"]["current"] == 1.0
    assert any("revol_util" in note for note in report["notes"])


def test_bad_input_is_a_typed_error_naming_the_field(tmp_path: Path, profile) -> None:
    with pytest.raises(DriftInputError, match=r"prediction log: missing column\(s\) \['served', 'status'\]"):
        window_data(pd.DataFrame({"version": ["1"]}), version="1")
    log = read_predictions(tmp_path, MODEL, T0, T0 + HOUR)
    with pytest.raises(DriftInputError, match="window: start"):
        judge_window(profile, log, root=tmp_path, model=MODEL, alias="champion", version="1", start=T0 + HOUR,
                     end=T0)
    with pytest.raises(DriftInputError, match="window: start"):
        judge_window(profile, log, root=tmp_path, model=MODEL, alias="champion", version="1",
                     start=T0.replace(tzinfo=None), end=T0 + HOUR)
    with pytest.raises(DriftInputError, match="drift settings: alpha"):
        DriftSettings(alpha=2.0)


def test_paths_are_shown_without_connection_ids() -> None:
    assert display_path("s3://lake_conn@bucket/p/drift/report.json") == "s3://bucket/p/drift/report.json"
    assert display_path("file:///tmp/x/report.json") == "file:///tmp/x/report.json"
    assert display_path("/tmp/x") == "/tmp/x"


def test_drift_weights_must_be_real_numbers() -> None:
    """A weight that is a bool (JSON true) or a string is a typed error naming the feature, never weight 1."""
    from crispflow.monitoring.windows import chosen_weights

    assert chosen_weights({"a": 1, "b": 0.5, "c": -1.0, "z": "x"}, ["a", "b", "c"], "w") == {"a": 1.0, "b": 0.5}
    assert chosen_weights({"a": 0.0}, ["a"], "w") is None
    for bad in (True, "0.5", None):
        with pytest.raises(DriftInputError, match=r"m v1 drift_weights: b: .* is not a weight \(must be a real"):
            chosen_weights({"a": 0.5, "b": bad}, ["a", "b"], "m v1 drift_weights")
