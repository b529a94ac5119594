"""The compiled scorer (crispflow.model.compiled) against the model it was compiled from: every estimator crispflow
trains, calibrated and not, on the demo data's holdout and on synthetic rows with missing values, unseen categories
and extremes; through the frame path and the JSON-records path; and in the server's `LoadedModel`, which falls
back to the pipeline (and says why) when the scorer is unsupported or disagrees."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.calibration import CalibratedClassifierCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from test_explain import CASES, case, make_spec, synthetic

from crispflow.model.compiled import (
    TOLERANCE,
    CompiledScorer,
    ScorerMismatch,
    UnsupportedModel,
    compile_model,
    unwrap,
    verification_records,
    verified_scorer,
    verify,
)
from crispflow.model.features import features
from crispflow.model.training import fit_final
from crispflow.serving.models import LoadedModel, with_scorer
from crispflow.serving.validation import InputSchema

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def response(model: Any, task: str, frame: pd.DataFrame) -> np.ndarray:
    out = model.predict(frame) if task == "regression" else model.predict_proba(frame)
    return np.asarray(out, dtype="float64")


def gap(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


def as_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as /predict sends them: JSON values (full precision), missing → null, datetimes as ISO text."""
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({k: None if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))
                    else v.isoformat() if isinstance(v, pd.Timestamp)
                    else (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return json.loads(json.dumps(out))


def odd_rows(frame: pd.DataFrame, text: tuple[str, ...], numeric: tuple[str, ...]) -> pd.DataFrame:
    """Copies of the first rows with unseen categories, None / NaN in text and numeric columns, and extremes."""
    rows = frame.head(6).copy().astype({c: object for c in text})
    for col in text:
        rows.loc[rows.index[0], col] = "never-seen-in-training"
        rows.loc[rows.index[1], col] = None
        rows.loc[rows.index[2], col] = np.nan
    for col in numeric:
        rows[col] = rows[col].astype("float64")
        rows.loc[rows.index[3], col] = np.nan
        rows.loc[rows.index[4], col] = 1e12
        rows.loc[rows.index[5], col] = -1e12
    return rows


# --- every estimator, through the frame path ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_the_compiled_scorer_answers_like_the_model(name: str) -> None:
    spec, model, _, test = case(name)
    X = features(spec, test)
    scorer, checked = verified_scorer(model, spec.task, [X])
    assert checked <= TOLERANCE
    assert scorer.kind == ("linear" if "-lr-" in name or "ridge" in name else "tree")
    assert gap(scorer.response_frame(X), response(model, spec.task, X)) <= TOLERANCE
    odd = odd_rows(X, ("grade", "region", "flag"), ("signal", "noise"))
    assert gap(scorer.response_frame(odd), response(model, spec.task, odd)) <= TOLERANCE
    assert scorer.response_records(as_records(X.head(3))) is None  # a datetime feature: the frame path types it


# --- the records path: every estimator kind, calibrated and not ---------------------------------------------

RECORD_CASES = {
    "binary-lr-sigmoid": ("binary", "logistic_regression", "sigmoid", {}),
    "binary-lr-isotonic": ("binary", "logistic_regression", "isotonic", {}),
    "binary-lr-uncalibrated": ("binary", "logistic_regression", None, {}),
    "multiclass-lr-sigmoid": ("multiclass", "logistic_regression", "sigmoid", {}),
    "multiclass-lr-uncalibrated": ("multiclass", "logistic_regression", None, {}),
    "regression-ridge": ("regression", "ridge", None, {}),
    "binary-hgb-uncalibrated": ("binary", "hist_gradient_boosting", None, {"max_iter": 30}),
    "binary-hgb-sigmoid": ("binary", "hist_gradient_boosting", "sigmoid", {"max_iter": 30}),
    "multiclass-hgb-isotonic": ("multiclass", "hist_gradient_boosting", "isotonic", {"max_iter": 20}),
    "regression-hgb": ("regression", "hist_gradient_boosting", None, {"max_iter": 30}),
    "binary-rf-sigmoid": ("binary", "random_forest", "sigmoid", {"n_estimators": 15, "max_depth": 5}),
    "multiclass-rf-uncalibrated": ("multiclass", "random_forest", None, {"n_estimators": 15, "max_depth": 5}),
    "regression-rf": ("regression", "random_forest", None, {"n_estimators": 15, "max_depth": 5}),
}


@pytest.mark.parametrize("name", list(RECORD_CASES))
def test_json_records_are_scored_without_a_frame_exactly_like_the_model(name: str) -> None:
    task, estimator, calibration, params = RECORD_CASES[name]
    spec = make_spec(task, estimator, calibration, drop=("opened",))
    train, test = synthetic(task, 900, 3).drop(columns="opened"), synthetic(task, 300, 4).drop(columns="opened")
    model, _, _ = fit_final(spec, {"config_id": "m-0", "candidate": "m", "params": params}, train)
    scorer = compile_model(model, task)
    X = features(spec, test)
    odd = odd_rows(X, ("grade", "region"), ("signal", "count"))
    for frame in (X, odd):
        records = as_records(frame)
        by_records = scorer.response_records(records)
        assert by_records is not None
        assert gap(by_records, response(model, task, frame)) <= TOLERANCE
    # booleans arrive as JSON true/false and are typed as text, like FrameTyper does
    flags = [{**r, "flag": flag} for r, flag in zip(as_records(X.head(3)), (True, False, None), strict=True)]
    assert isinstance(flags[0]["flag"], bool)
    frame = X.head(3).assign(flag=pd.array([True, False, None], dtype="boolean"))
    assert gap(scorer.response_records(flags), response(model, task, frame)) <= TOLERANCE
    # a value the fast path does not type (a number as text) is left to the frame path, never guessed
    assert scorer.response_records([{**flags[0], "signal": "1.5"}]) is None
    assert verify(scorer) <= TOLERANCE


def test_verification_rows_cover_missing_unseen_known_categories_and_extremes() -> None:
    spec, model, _, _ = case("binary-lr-calibrated")
    records = verification_records(unwrap(model))
    grades = {r["grade"] for r in records}
    assert {None, "__unseen__", "A", "B", "C"} <= grades
    assert any(r["signal"] is None for r in records) and any(r["signal"] == 1e12 for r in records)
    assert any(all(v is None for v in r.values()) for r in records)
    assert set(records[0]) == set(spec.feature_columns)


# --- the demo data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    from crispflow.data.extracts import conform, new_rejections
    from crispflow.model.holdout import holdout_split
    from crispflow.spec import load_spec

    published = conform(load_spec("lending_club"), pd.read_parquet(ROOT / "include/data/lending_club.parquet"),
                        new_rejections())
    train, holdout = holdout_split(load_spec("lending_club"), published)
    return train.head(2500), holdout


@pytest.mark.parametrize(("pipeline", "candidate", "params"), [
    ("lending_club", "logreg", {"C": 0.1}),
    ("lending_club", "hgb", {"max_iter": 30}),
    ("lending_club_verification", "logreg", {"C": 1.0}),
    ("lending_club_rate", "ridge", {"alpha": 1.0}),
    ("lending_club_rate", "hgb", {"max_iter": 30}),
])
def test_on_the_demo_holdout_the_compiled_scorer_is_the_blessed_model(demo, pipeline, candidate, params) -> None:
    from crispflow.spec import load_spec

    spec = load_spec(pipeline)
    train, holdout = demo
    model, _, _ = fit_final(spec, {"config_id": f"{candidate}-0", "candidate": candidate, "params": params}, train)
    X = features(spec, holdout)
    scorer, checked = verified_scorer(model, spec.task, [X])
    expected = response(model, spec.task, X)
    assert checked <= TOLERANCE
    assert gap(scorer.response_frame(X), expected) <= TOLERANCE
    by_records = scorer.response_records(as_records(X))
    assert by_records is not None and gap(by_records, expected) <= TOLERANCE


# --- what is not compiled -----------------------------------------------------------------------------------


def test_unsupported_models_raise_a_typed_error_naming_what_is_unsupported() -> None:
    spec, model, train, _ = case("binary-lr-uncalibrated")
    knn = Pipeline([("preprocess", model[0]), ("model", KNeighborsClassifier(3))])
    knn.fit(features(spec, train), train["y"] == "yes")
    with pytest.raises(UnsupportedModel, match="KNeighborsClassifier has no compiled scorer"):
        compile_model(knn, "binary")
    with pytest.raises(UnsupportedModel, match="expected a scikit-learn Pipeline"):
        compile_model(KNeighborsClassifier(), "binary")
    ensemble = CalibratedClassifierCV(model, cv=2, ensemble=True).fit(features(spec, train), train["y"] == "yes")
    with pytest.raises(UnsupportedModel, match=r"ensemble=True"):
        compile_model(ensemble, "binary")
    with pytest.raises(UnsupportedModel, match="is a classifier, the task is regression"):
        compile_model(model, "regression")


def test_a_scorer_that_disagrees_with_its_model_is_refused() -> None:
    """Parts of one model served as another (v1's pieces, v2's answers): verification sees the difference."""
    _, model, _, _ = case("binary-lr-calibrated")
    _, other, _, _ = case("binary-lr-uncalibrated")
    scorer = CompiledScorer(dataclasses.replace(unwrap(model), model=other), "binary")
    with pytest.raises(ScorerMismatch, match="differs from the model's by"):
        verify(scorer)


# --- in the server's LoadedModel ----------------------------------------------------------------------------


def _loaded(spec: Any, model: Any, train: pd.DataFrame) -> LoadedModel:
    schema = InputSchema.from_signature(infer_signature(features(spec, train).head(100)))
    task = spec.task
    classes = tuple(spec.class_labels) if task == "multiclass" else ()
    return LoadedModel("m", "1", model, 0.5 if task == "binary" else None, "tag", schema, "sha", "run", 0.0, task,
                       classes)


@pytest.mark.parametrize("name", ["binary-lr-sigmoid", "multiclass-hgb-isotonic", "regression-ridge"])
def test_a_loaded_version_scores_records_with_its_verified_compiled_scorer(name: str) -> None:
    task, estimator, calibration, params = RECORD_CASES[name]
    spec = make_spec(task, estimator, calibration, drop=("opened",))
    train, test = synthetic(task, 900, 5).drop(columns="opened"), synthetic(task, 50, 6).drop(columns="opened")
    model, _, _ = fit_final(spec, {"config_id": "m-0", "candidate": "m", "params": params}, train)
    pipeline = _loaded(spec, model, train)
    compiled = with_scorer(pipeline)
    assert compiled.scorer_kind == "compiled" and compiled.scorer_status.startswith("compiled: ")
    assert compiled.describe()["scorer"]["kind"] == "compiled"
    records = as_records(features(spec, test))
    expected = pipeline.output(pipeline.schema.frame(records))
    assert gap(compiled.output_records(records), expected) <= TOLERANCE
    assert gap(pipeline.output_records(records), expected) == 0.0


def test_a_loaded_version_without_a_compiled_form_is_scored_by_its_pipeline_and_says_why() -> None:
    spec, model, train, _ = case("binary-lr-uncalibrated")
    knn = Pipeline([("preprocess", model[0]), ("model", KNeighborsClassifier(3))])
    knn.fit(features(spec, train), train["y"] == "yes")
    loaded = with_scorer(_loaded(spec, knn, train))
    assert loaded.scorer is None and loaded.scorer_kind == "pipeline"
    assert "KNeighborsClassifier has no compiled scorer" in loaded.describe()["scorer"]["status"]
    records = as_records(features(spec, train).head(5))
    out = loaded.output_records(records)
    assert out.shape == (5,) and np.all((out >= 0) & (out <= 1)) and not math.isnan(out.sum())
