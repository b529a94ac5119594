"""Local explanations (crispflow.model.explain): exact additivity for every model shape training produces, feature
grouping, edge rows, the record's checks and the load-time self-test, on real pipelines fitted to synthetic data."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from crispflow.model.explain import (
    TOLERANCE,
    ExplainerError,
    ExplainerSelfTestFailed,
    LocalExplainer,
    explainer_record,
    record_digest,
)
from crispflow.model.features import build_preprocessor, features, labels
from crispflow.model.synthetic import UNSEEN
from crispflow.model.training import fit_final
from crispflow.spec import PipelineSpec, parse_spec

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURES = ["signal", "count", "constant", "grade", "region", "flag", "opened", "noise"]
CLASSES = ["a", "b", "c"]


def make_spec(task: str, estimator: str, calibration: str | None = "sigmoid", drop: tuple[str, ...] = ()
              ) -> PipelineSpec:
    """A small spec: numeric (with missing values), a constant, categorical (one rare level, one PII column),
    bool and datetime features, and a target per task."""
    target, target_column = {
        "binary": ({"column": "y", "positive": "yes"}, {"name": "y", "type": "category", "allowed": ["no", "yes"]}),
        "multiclass": ({"column": "y", "task": "multiclass", "classes": CLASSES},
                       {"name": "y", "type": "category", "allowed": CLASSES}),
        "regression": ({"column": "y", "task": "regression"}, {"name": "y", "type": "float"}),
    }[task]
    columns = [
        {"name": "id", "type": "int"},
        {"name": "signal", "type": "float", "nullable": True},
        {"name": "count", "type": "int", "nullable": True},
        {"name": "constant", "type": "float"},
        {"name": "grade", "type": "category", "nullable": True},
        {"name": "region", "type": "category", "pii": True},
        {"name": "flag", "type": "bool", "nullable": True},
        {"name": "opened", "type": "datetime", "nullable": True},
        {"name": "noise", "type": "float"},
        target_column,
    ]
    columns = [c for c in columns if c["name"] not in drop]
    training: dict[str, Any] = {"candidates": [{"name": "m", "estimator": estimator}], "cv_folds": 2,
                                "search_budget": 1, "min_rows": 100}
    if task != "regression":
        training["calibration"] = calibration
    return parse_spec({"name": "synthetic", "sources": [{"name": "s", "kind": "file", "url": "x.csv"}],
                       "key": "id", "target": target, "columns": columns, "training": training})


def synthetic(task: str, n: int, seed: int) -> pd.DataFrame:
    """Rows typed as the data phase publishes them; the label is built from `signal` (strongly), grade, flag
    and count; `noise` and `region` are irrelevant; grade "D" is rare (pooled as infrequent)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    count = rng.poisson(3, n).astype(float)
    grade = rng.choice(["A", "B", "C", "D"], size=n, p=[0.4, 0.3, 0.295, 0.005]).astype(object)
    flag = rng.random(n) < 0.5
    score = 2.0 * signal + 0.8 * (grade == "A") - 0.5 * flag + 0.2 * (count - 3)
    if task == "binary":
        y: Any = np.where(rng.random(n) < 1 / (1 + np.exp(-(score - 0.5))), "yes", "no")
    elif task == "multiclass":
        y = np.array(CLASSES)[np.argmax(np.column_stack([score, np.zeros(n), -score]) + rng.gumbel(size=(n, 3)),
                                        axis=1)]
    else:
        y = 3.0 * score + rng.normal(scale=0.5, size=n)
    frame = pd.DataFrame({
        "id": np.arange(n) + seed * 100_000,
        "signal": np.where(rng.random(n) < 0.05, np.nan, signal),
        "count": pd.array(np.where(rng.random(n) < 0.05, np.nan, count), dtype="Float64").astype("Int64"),
        "constant": np.full(n, 7.0),
        "grade": np.where(rng.random(n) < 0.03, None, grade),
        "region": rng.choice(["north", "south", "east", "west"], size=n).astype(object),
        "flag": pd.array(np.where(rng.random(n) < 0.03, None, flag), dtype="boolean"),
        "opened": pd.Series(pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 700, n), "D")),
        "noise": rng.normal(size=n),
        "y": y,
    })
    frame.loc[rng.random(n) < 0.03, "opened"] = pd.NaT
    return frame


def fitted(task: str, estimator: str, calibration: str | None = "sigmoid",
           **params: Any) -> tuple[PipelineSpec, Any, pd.DataFrame, pd.DataFrame]:
    """(spec, final model as training fits it, train, 1,000 test rows)."""
    spec = make_spec(task, estimator, calibration)
    train, test = synthetic(task, 1500, 1), synthetic(task, 1000, 2)
    model, _, _ = fit_final(spec, {"config_id": "m-0", "candidate": "m", "params": params}, train)
    return spec, model, train, test


CASES = {
    "binary-lr-calibrated": ("binary", "logistic_regression", "sigmoid", {}),
    "binary-lr-uncalibrated": ("binary", "logistic_regression", None, {}),
    "binary-lr-isotonic": ("binary", "logistic_regression", "isotonic", {}),
    "binary-hgb-calibrated": ("binary", "hist_gradient_boosting", "sigmoid", {"max_iter": 150}),
    "binary-rf-calibrated": ("binary", "random_forest", "sigmoid", {"n_estimators": 20, "max_depth": 6}),
    "multiclass-lr-calibrated": ("multiclass", "logistic_regression", "sigmoid", {}),
    "multiclass-lr-uncalibrated": ("multiclass", "logistic_regression", None, {}),
    "multiclass-hgb-calibrated": ("multiclass", "hist_gradient_boosting", "sigmoid", {"max_iter": 40}),
    "regression-ridge": ("regression", "ridge", None, {}),
    "regression-hgb": ("regression", "hist_gradient_boosting", None, {"max_iter": 100}),
}
_CACHE: dict[str, tuple[PipelineSpec, Any, pd.DataFrame, pd.DataFrame]] = {}


def case(name: str) -> tuple[PipelineSpec, Any, pd.DataFrame, pd.DataFrame]:
    """A fitted case, fitted once per test session (tests never change the cached model: they copy it)."""
    if name not in _CACHE:
        task, estimator, calibration, params = CASES[name]
        _CACHE[name] = fitted(task, estimator, calibration, **params)
    return _CACHE[name]


def built(name: str) -> tuple[PipelineSpec, Any, pd.DataFrame, dict[str, Any], LocalExplainer]:
    spec, model, train, test = case(name)
    record = json.loads(json.dumps(explainer_record(spec, model, train), allow_nan=False))
    return spec, model, test, record, LocalExplainer.build(spec.task, model, record)


def inner_pipeline(model: Any) -> Pipeline:
    return model.calibrated_classifiers_[0].estimator if isinstance(model, CalibratedClassifierCV) else model


# --- additivity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_explanations_are_additive_and_explain_the_models_own_output(name: str) -> None:
    spec, model, test, record, explainer = built(name)
    X = features(spec, test)
    method = "linear_exact" if ("lr" in name or "ridge" in name) else "tree_shap"
    assert (explainer.method, record["method"], record["tolerance"]) == (method, method, TOLERANCE[method])
    assert explainer.features == spec.feature_columns == FEATURES

    base, contributions, output = explainer.contributions(X)
    assert base.shape == output.shape == (1000,) and contributions.shape == (1000, len(FEATURES))
    assert np.abs(base + contributions.sum(axis=1) - output).max() <= TOLERANCE[method]
    assert explainer.self_test(X) <= TOLERANCE[method]

    # the explained output is the model's own, in the stated space
    inner = inner_pipeline(model)
    if spec.task == "regression":
        assert explainer.space == "prediction"
        np.testing.assert_allclose(output, model.predict(X), rtol=0, atol=1e-12)
    elif spec.task == "binary" and "rf" in name:
        assert explainer.space == "probability_uncalibrated"
        np.testing.assert_allclose(output, inner.predict_proba(X)[:, 1], rtol=0, atol=1e-12)
    elif spec.task == "binary":
        calibrated = CASES[name][2] is not None
        assert explainer.space == ("log_odds_uncalibrated" if calibrated else "log_odds")
        np.testing.assert_allclose(output, inner.decision_function(X), rtol=0, atol=1e-12)
    else:
        served_class = np.argmax(model.predict_proba(X), axis=1)
        np.testing.assert_allclose(output, inner.decision_function(X)[np.arange(1000), served_class], rtol=0,
                                   atol=1e-12)
        classes = [row["class"] for row in explainer.explain(X.head(50), 3)]
        assert classes == model.predict(X.head(50)).tolist()
    # the served output, computed from one transform, is the model's own
    np.testing.assert_allclose(explainer.model_response(explainer.transform(X)),
                               model.predict(X) if spec.task == "regression" else model.predict_proba(X),
                               rtol=0, atol=1e-12)


def test_linear_contributions_follow_the_columns_names_back_to_their_features() -> None:
    """Independent grouping from the ColumnTransformer's column names: coef * (x - mean) summed per feature."""
    spec, model, test, record, explainer = built("binary-lr-calibrated")
    inner = inner_pipeline(model)
    preprocess, lr = inner[:-1], inner[-1]
    X = features(spec, test)
    per_column = lr.coef_[0] * (preprocess.transform(X) - np.asarray(record["reference"]))
    names = preprocess[-1].get_feature_names_out()
    expected = np.zeros((len(X), len(FEATURES)))
    for c, name in enumerate(names):
        column = name.split("__", 1)[1].removeprefix("missingindicator_")
        owner = next(f for f in FEATURES if column == f or column.startswith(f + "_"))
        expected[:, FEATURES.index(owner)] += per_column[:, c]
    _, contributions, _ = explainer.contributions(X)
    np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-12)
    assert {n.split("__", 1)[1] for n in names} >= {"opened__year", "grade_infrequent_sklearn",
                                                     "missingindicator_signal"}
    # the reference is the mean transformed training row; the base is the model's log-odds there
    spec_, _, train, _ = case("binary-lr-calibrated")
    np.testing.assert_allclose(record["reference"], preprocess.transform(features(spec_, train)).mean(axis=0))


@pytest.mark.parametrize("name", ["binary-lr-calibrated", "binary-hgb-calibrated", "regression-ridge"])
def test_the_feature_the_label_is_built_from_explains_most(name: str) -> None:
    spec, _, test, _, explainer = built(name)
    _, contributions, _ = explainer.contributions(features(spec, test))
    mean_abs = dict(zip(FEATURES, np.abs(contributions).mean(axis=0), strict=True))
    assert max(mean_abs, key=mean_abs.get) == "signal"
    assert mean_abs["constant"] == 0.0  # never informative: no coefficient / split can use it
    assert mean_abs["noise"] < 0.25 * mean_abs["signal"]


# --- edge rows ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["binary-lr-calibrated", "binary-hgb-calibrated", "multiclass-lr-calibrated",
                                  "regression-hgb"])
def test_unseen_categories_imputed_missing_values_and_a_constant_feature_are_explained(name: str) -> None:
    spec, _, test, _, explainer = built(name)
    rows = features(spec, test).head(4).copy()
    rows.loc[rows.index[0], "grade"] = "Z9"  # unseen; the encoder has an infrequent column for grade
    rows.loc[rows.index[0], "region"] = "mars"  # unseen; no infrequent column: all zeros
    rows.loc[rows.index[1], "signal"] = np.nan  # imputed, with a missing indicator
    rows.loc[rows.index[1], "count"] = pd.NA
    rows.loc[rows.index[2], "flag"] = pd.NA
    rows.loc[rows.index[2], "opened"] = pd.NaT  # datetime parts imputed
    rows.loc[rows.index[3], "constant"] = 7.0
    rows.loc[rows.index[3], "opened"] = pd.Timestamp("2024-06-01")
    tolerance = TOLERANCE[explainer.method]
    assert explainer.self_test(rows) <= tolerance
    explained = explainer.explain(rows, len(FEATURES))
    values = [{c["feature"]: c["value"] for c in row["contributions"]} for row in explained]
    assert (values[0]["grade"], values[0]["region"]) == ("Z9", "mars")
    assert values[1]["signal"] is None and values[1]["count"] is None
    assert values[2]["flag"] is None and values[2]["opened"] is None
    assert values[3]["constant"] == 7.0 and values[3]["opened"] == "2024-06-01T00:00:00"
    for row in explained:
        assert row["check"]["abs_error"] <= tolerance
        assert abs(row["base_value"] + sum(c["contribution"] for c in row["contributions"]) + row["other"]
                   - row["check"]["output"]) <= tolerance
        assert next(c for c in row["contributions"] if c["feature"] == "constant")["contribution"] == 0.0


# --- explain(): shape -----------------------------------------------------------------------------------------


def test_explain_returns_top_k_sorted_with_the_rest_in_other_as_json() -> None:
    spec, _, test, _, explainer = built("binary-hgb-calibrated")
    X = features(spec, test).head(20)
    _, contributions, output = explainer.contributions(X)
    explained = explainer.explain(X, 3)
    assert len(explained) == 20
    json.dumps(explained, allow_nan=False)
    for i, row in enumerate(explained):
        assert set(row) == {"method", "space", "base_value", "contributions", "other", "check"}
        assert (row["method"], row["space"]) == ("tree_shap", "log_odds_uncalibrated")
        shown = [c["contribution"] for c in row["contributions"]]
        assert len(shown) == 3 and [abs(c) for c in shown] == sorted((abs(c) for c in shown), reverse=True)
        assert min(abs(c) for c in shown) >= np.sort(np.abs(contributions[i]))[-3]
        assert row["other"] == pytest.approx(contributions[i].sum() - sum(shown), abs=1e-12)
        assert row["check"]["output"] == output[i]
        for item in row["contributions"]:
            raw = X.iloc[i][item["feature"]]
            if item["feature"] == "opened":
                assert item["value"] == (None if pd.isna(raw) else raw.isoformat())
            elif pd.isna(raw):
                assert item["value"] is None
            else:
                assert item["value"] == (raw.item() if hasattr(raw, "item") else raw)
    everything = explainer.explain(X.head(1), len(FEATURES))[0]
    assert everything["other"] == 0.0 and {c["feature"] for c in everything["contributions"]} == set(FEATURES)


def test_score_and_explain_answers_like_the_model_from_one_transform() -> None:
    spec, model, test, _, explainer = built("binary-lr-calibrated")
    X = features(spec, test).head(7)
    response, explained = explainer.score_and_explain(X, 4)
    np.testing.assert_allclose(response, model.predict_proba(X), rtol=0, atol=1e-12)
    assert explained == explainer.explain(X, 4)
    transformed = explainer.transform(X)
    assert explainer.explain(X, 4, transformed=transformed) == explained
    with pytest.raises(ExplainerError, match="transformed"):
        explainer.explain(X, 4, transformed=transformed[:, :-1])


@pytest.mark.parametrize("top_k", [0, len(FEATURES) + 1, True, 2.0, "3"])
def test_top_k_out_of_range_is_refused(top_k: Any) -> None:
    spec, _, test, _, explainer = built("binary-lr-uncalibrated")
    with pytest.raises(ExplainerError, match=rf"top_k: must be an integer in \[1, {len(FEATURES)}\]"):
        explainer.explain(features(spec, test).head(1), top_k)


# --- the record -----------------------------------------------------------------------------------------------


def test_the_record_is_json_with_synthetic_probe_rows_only() -> None:
    spec, model, train, _ = case("binary-lr-calibrated")
    record = explainer_record(spec, model, train)
    text = json.dumps(record, allow_nan=False)
    assert record_digest(json.loads(text)) == record_digest(record)
    assert record_digest({**record, "tolerance": 1e-7}) != record_digest(record)
    probe = pd.DataFrame(record["probe"])
    assert list(probe.columns) == FEATURES and len(probe) == len(record["probe_output"])
    # medians / modes, never a training row; the PII column never carries a training value
    real = {tuple(r) for r in features(spec, train).astype(object).itertuples(index=False)}
    assert not real & {tuple(r) for r in probe.astype(object).itertuples(index=False)}
    assert {row["region"] for row in record["probe"]} == {UNSEEN, None}
    assert record["probe"][0]["signal"] == pytest.approx(train["signal"].median())
    assert record["probe"][0]["grade"] == "A"
    # a missing variant per numeric / datetime column, an unseen one per text column, and an all-missing row
    assert probe["signal"].isna().sum() >= 2 and probe["opened"].isna().sum() >= 2
    assert [row["grade"] for row in record["probe"]].count(UNSEEN) == 1
    assert [row["flag"] for row in record["probe"]].count(UNSEEN) == 1
    assert probe.iloc[-1].isna().all()


def _drop_first_feature(r: dict[str, Any]) -> None:
    r["features"] = r["features"][1:]


def _rename_feature(r: dict[str, Any]) -> None:
    r["features"] = ["renamed" if f == "noise" else f for f in r["features"]]


def _tree_method(r: dict[str, Any]) -> None:
    r["method"] = "tree_shap"


def _short_reference(r: dict[str, Any]) -> None:
    r["reference"] = r["reference"][:-1]


def _probe_without_a_column(r: dict[str, Any]) -> None:
    del r["probe"][0]["signal"]


def _probe_with_a_number_as_category(r: dict[str, Any]) -> None:
    r["probe"][0]["grade"] = 3


def _probe_with_a_bad_date(r: dict[str, Any]) -> None:
    r["probe"][0]["opened"] = "not a date"


def _loose_tolerance(r: dict[str, Any]) -> None:
    r["tolerance"] = 1.0


def _negative_tolerance(r: dict[str, Any]) -> None:
    r["tolerance"] = -1e-6


def _other_format(r: dict[str, Any]) -> None:
    r["format"] = 2


def _other_space(r: dict[str, Any]) -> None:
    r["space"] = "probability"


def _missing_key(r: dict[str, Any]) -> None:
    del r["probe_output"]


@pytest.mark.parametrize(("tamper", "message"), [
    (_drop_first_feature, "features"),
    (_rename_feature, "features"),
    (_tree_method, "record.method: 'tree_shap' does not fit"),
    (_short_reference, "record.reference: linear_exact needs one value per transformed column"),
    (_probe_without_a_column, r"record.probe\[0\]: must have exactly the features"),
    (_probe_with_a_number_as_category, "record.probe: rows cannot be read"),
    (_probe_with_a_bad_date, "record.probe: rows cannot be read"),
    (_loose_tolerance, "record.tolerance: 1.0 is looser"),
    (_negative_tolerance, "record.tolerance: must be a positive number"),
    (_other_format, "record.format"),
    (_other_space, "record.space"),
    (_missing_key, r"record: missing keys \['probe_output'\]"),
])
def test_a_tampered_record_is_refused(tamper: Any, message: str) -> None:
    spec, model, _, record, _ = built("binary-lr-calibrated")
    tampered = copy.deepcopy(record)
    tamper(tampered)
    with pytest.raises(ExplainerError, match=message) as err:
        LocalExplainer.build(spec.task, model, tampered)
    assert not isinstance(err.value, ExplainerSelfTestFailed)


def test_a_record_for_another_task_or_estimator_family_is_refused() -> None:
    _, model, _, record, _ = built("binary-lr-calibrated")
    with pytest.raises(ExplainerError, match="is a classifier, the task is regression"):
        LocalExplainer.build("regression", model, record)
    hgb_spec, hgb_model, _, _ = case("binary-hgb-calibrated")
    with pytest.raises(ExplainerError, match=r"record\.method: 'linear_exact' does not fit"):
        LocalExplainer.build(hgb_spec.task, hgb_model, record)


def test_a_model_changed_after_its_record_fails_the_self_test() -> None:
    """The record binds the model: the probe's recorded output no longer matches once the estimator changes."""
    spec, model, _, record, _ = built("binary-lr-calibrated")
    swapped = copy.deepcopy(model)
    inner_pipeline(swapped)[-1].coef_ = inner_pipeline(swapped)[-1].coef_ * 1.01
    with pytest.raises(ExplainerSelfTestFailed, match=r"differs from the recorded one by .* \(tolerance 1e-06\)"):
        LocalExplainer.build(spec.task, swapped, record)
    # another model fitted on other rows, same spec and estimator: refused the same way
    other, _, _ = fit_final(spec, {"config_id": "m-0", "candidate": "m", "params": {}}, synthetic("binary", 800, 3))
    with pytest.raises(ExplainerSelfTestFailed, match="the record was made for another model"):
        LocalExplainer.build(spec.task, other, record)


@pytest.mark.parametrize("name", ["binary-lr-calibrated", "binary-hgb-calibrated"])
def test_the_self_test_fails_when_explanations_stop_adding_up(name: str) -> None:
    """An explainer whose model is changed under it (coefficients / the boosting baseline) no longer adds up to
    the model's output: self_test names the error and the tolerance."""
    spec, model, test, record, _ = built(name)
    changed = copy.deepcopy(model)
    explainer = LocalExplainer.build(spec.task, changed, record)
    X = features(spec, test).head(50)
    assert explainer.self_test(X) <= record["tolerance"]
    estimator = inner_pipeline(changed)[-1]
    if hasattr(estimator, "coef_"):
        estimator.coef_ += 0.1
    else:
        estimator._baseline_prediction = estimator._baseline_prediction + 0.1
    with pytest.raises(ExplainerSelfTestFailed, match=rf"max \|base \+ sum - output\| = .* > tolerance "
                                                      rf"{record['tolerance']:g}"):
        explainer.self_test(X)


def test_models_without_an_exact_explainer_are_refused() -> None:
    spec, model, train, _ = case("binary-lr-calibrated")
    X, y = features(spec, train), labels(spec, train)
    knn = Pipeline([("preprocess", build_preprocessor(spec)), ("model", KNeighborsClassifier())]).fit(X, y)
    with pytest.raises(ExplainerError, match="KNeighborsClassifier has no exact explainer"):
        explainer_record(spec, knn, train)
    ensemble = CalibratedClassifierCV(copy.deepcopy(inner_pipeline(model)), cv=2, ensemble=True).fit(X, y)
    with pytest.raises(ExplainerError, match="ensemble=True"):
        explainer_record(spec, ensemble, train)
    with pytest.raises(ExplainerError, match="expected a scikit-learn Pipeline"):
        explainer_record(spec, inner_pipeline(model)[-1], train)
    narrower = make_spec("binary", "logistic_regression", drop=("noise",))
    with pytest.raises(ExplainerError, match="are not the model's inputs"):
        explainer_record(narrower, model, train)
