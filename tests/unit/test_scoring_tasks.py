"""Batch scoring per task on a tmp lake: regression predictions with their conformal interval, multiclass predicted
class and per-class probabilities, the version's task against the spec's, and the pinned model's JSON (binary is
covered by test_scoring.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from crispflow.lake import Lake, canonical_json, frame_digest, write_atomic
from crispflow.model.features import build_preprocessor, features
from crispflow.model.registry import RegistryError, VersionTask
from crispflow.model.registry import task_of as version_task
from crispflow.model.tasks import labels, model_output
from crispflow.serving import batch_scoring as scoring
from crispflow.serving.batch_scoring import ModelRef, ScoringError
from crispflow.settings import project_root
from crispflow.spec import load_spec

RUN = {"dag_id": "batch_score", "run_id": "manual__1"}
INTERVAL = {"coverage": 0.9, "halfwidth": 3.25, "method": "split_conformal_oof"}
CLASSES = ("Not_Verified", "Source_Verified", "Verified")
RATE = ModelRef("crispflow-lending_club_rate", "2", "champion", "a" * 64, "run-1", None, "regression", (), INTERVAL)
VERIFICATION = ModelRef("crispflow-lending_club_verification", "5", "champion", "b" * 64, "run-2", None,
                        "multiclass", CLASSES)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet").head(5000)


def fitted(spec, frame: pd.DataFrame, estimator) -> Pipeline:
    with threadpool_limits(limits=1):
        return Pipeline([("preprocess", build_preprocessor(spec)), ("model", estimator)]).fit(
            features(spec, frame), labels(spec, frame))


def publish(lake: Lake, pipeline: str, frame: pd.DataFrame) -> str:
    """A curated version as the data phase leaves it (data.parquet + manifest.json), row groups of 1,500."""
    digest = frame_digest(frame)
    version_id = "ds-" + digest[:16]
    folder = lake.version_dir(pipeline, version_id)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "data.parquet", row_group_size=1_500)
    manifest = {"dataset_version_id": version_id, "content_sha256": digest, "pipeline": pipeline,
                "rows": {"in": len(frame), "published": len(frame), "quarantined": 0},
                "interval": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-10-01T00:00:00+00:00"},
                "files": {"data": lake.relative(folder / "data.parquet")},
                "published_by": {**RUN, "at": "2026-11-01T00:00:00+00:00"}}
    write_atomic(lake.manifest(pipeline, version_id), canonical_json(manifest))
    return version_id


def score(tmp_path: Path, spec, frame: pd.DataFrame, ref: ModelRef, model) -> tuple[pd.DataFrame, dict]:
    lake = Lake(tmp_path)
    version = publish(lake, spec.name, frame)
    plan = scoring.plan_partitions(lake, spec, version, ref, partition_rows=2_000)["plan"]
    results = [scoring.score_partition(lake, spec, plan, p, lambda: model, chunk_rows=700) for p in plan["partitions"]]
    manifest = scoring.commit(lake, plan["output"], RUN, results)["manifest"]
    return scoring.read_scores(lake, plan["output"]), manifest


def test_regression_scores_are_predictions_with_their_conformal_interval(tmp_path: Path, frame) -> None:
    spec = load_spec("lending_club_rate")
    model = fitted(spec, frame, HistGradientBoostingRegressor(max_iter=40, random_state=0))
    scored, manifest = score(tmp_path, spec, frame, RATE, model)
    assert list(scored.columns) == ["loan_id", "_row", "prediction", "interval_low", "interval_high"]
    assert manifest["columns"] == list(scored.columns) and manifest["rows"]["scored"] == len(frame)
    assert manifest["model"]["task"] == "regression" and manifest["model"]["interval"] == INTERVAL
    with threadpool_limits(limits=1):
        expected = model.predict(features(spec, frame))
    np.testing.assert_allclose(scored["prediction"], expected, rtol=1e-12)
    np.testing.assert_allclose(scored["interval_high"] - scored["interval_low"], 2 * 3.25)
    assert (scored["interval_low"] < scored["prediction"]).all() and scored["loan_id"].tolist() == frame[
        "loan_id"].tolist()
    covered = scored["interval_low"].le(frame["int_rate"]) & frame["int_rate"].le(scored["interval_high"])
    assert 0.4 < covered.mean() < 1.0  # the rates fall inside a ±3.25-point band for most (in-sample) loans


def test_a_regression_version_without_an_interval_scores_with_null_bounds(tmp_path: Path, frame) -> None:
    spec = load_spec("lending_club_rate")
    model = fitted(spec, frame.head(1000), HistGradientBoostingRegressor(max_iter=10, random_state=0))
    bare = replace(RATE, interval=None)
    scored, _ = score(tmp_path, spec, frame.head(1500), bare, model)
    assert scored["interval_low"].isna().all() and scored["interval_high"].isna().all()
    assert scored["prediction"].notna().all()


def test_multiclass_scores_are_the_predicted_class_and_one_probability_per_class(tmp_path: Path, frame) -> None:
    spec = load_spec("lending_club_verification")
    model = fitted(spec, frame, LogisticRegression(max_iter=500))
    scored, manifest = score(tmp_path, spec, frame, VERIFICATION, model)
    proba_columns = [f"proba.{c}" for c in CLASSES]
    assert list(scored.columns) == ["loan_id", "_row", "prediction", *proba_columns]
    assert manifest["columns"] == list(scored.columns) and manifest["model"]["classes"] == list(CLASSES)
    with threadpool_limits(limits=1):
        expected = model_output(spec, model, features(spec, frame))
    np.testing.assert_allclose(scored[proba_columns].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scored[proba_columns].sum(axis=1), 1.0)
    assert scored["prediction"].tolist() == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert set(scored["prediction"]) == set(CLASSES)  # a real model predicts every class somewhere


def test_a_version_of_another_task_than_the_spec_is_refused(tmp_path: Path, frame) -> None:
    lake = Lake(tmp_path)
    spec = load_spec("lending_club_rate")
    version = publish(lake, spec.name, frame.head(1500))
    with pytest.raises(ScoringError, match="is a multiclass model, the spec of 'lending_club_rate' says task "
                                           "'regression'"):
        scoring.plan_partitions(lake, spec, version, VERIFICATION)
    assert not (lake.root / "scores").exists()


def test_version_tasks_come_from_the_tags() -> None:
    assert version_task({}) == VersionTask("binary")
    assert version_task({"crispflow.task": "regression"}) == VersionTask("regression")
    tags = {"crispflow.task": "multiclass", "crispflow.classes": json.dumps(list(CLASSES))}
    assert version_task(tags) == VersionTask("multiclass", CLASSES)
    for bad, message in (({"crispflow.task": "ranking"}, "crispflow.task: 'ranking' is not one of"),
                         ({"crispflow.task": "multiclass"}, "crispflow.classes: a multiclass version needs"),
                         ({"crispflow.task": "multiclass", "crispflow.classes": "[1, 2"}, "crispflow.classes")):
        with pytest.raises(RegistryError, match=message):
            version_task(bad)


def test_pinned_models_round_trip_and_a_binary_pin_keeps_its_old_form() -> None:
    binary = ModelRef("crispflow-lending_club", "3", "champion", "c" * 64, "run-3", 0.25)
    assert binary.to_json() == {"name": "crispflow-lending_club", "version": "3", "alias": "champion",
                                "artifact_sha256": "c" * 64, "run_id": "run-3", "threshold": 0.25}
    assert ModelRef.from_json(binary.to_json()) == binary
    for ref in (RATE, VERIFICATION):
        again = ModelRef.from_json(json.loads(canonical_json(ref.to_json())))
        assert again == ref and again.task_view == VersionTask(ref.task, ref.classes)
    assert scoring.output_columns("k", binary) == ["k", "_row", "score", "prediction"]
