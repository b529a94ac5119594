"""Training per task: estimators, holdout, CV, final fit, calibration and conformal intervals, on synthetic data.

Every spec here is built from a dict and validated like any spec; every frame is drawn from a known model with a
fixed seed, so each assertion compares against what that model implies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from crispflow.errors import SpecError
from crispflow.model import features as features_module
from crispflow.model.features import features
from crispflow.model.holdout import holdout_split
from crispflow.model.tasks import labels, model_output, predicted_class
from crispflow.model.training import (
    _calibrated,
    _estimator,
    best_config,
    build_model,
    conformal_halfwidth,
    cross_validate,
    fit_final,
    plan_search,
)
from crispflow.spec import PipelineSpec, parse_spec

CLASSES = ["mid", "high", "low"]  # deliberately not sorted: the model's column order is the spec's
CANDIDATES = {
    "binary": [
        {"name": "logreg", "estimator": "logistic_regression", "grid": {"C": [0.1, 1.0]}},
        {"name": "forest", "estimator": "random_forest", "grid": {"n_estimators": [20], "max_depth": [4]}},
    ],
    "multiclass": [
        {"name": "logreg", "estimator": "logistic_regression", "grid": {"C": [0.1, 1.0]}},
        {"name": "forest", "estimator": "random_forest", "grid": {"n_estimators": [20], "max_depth": [4]}},
    ],
    "regression": [
        {"name": "ridge", "estimator": "ridge", "grid": {"alpha": [0.1, 10.0]}},
        {"name": "hgb", "estimator": "hist_gradient_boosting", "grid": {"max_iter": [30], "learning_rate": [0.1]}},
    ],
}


def spec_for(task: str, training: dict[str, Any] | None = None, **top: Any) -> PipelineSpec:
    """A spec with numeric features x1, x2, a category c and a target y of the task."""
    target = {
        "binary": {"column": "y", "positive": "yes"},
        "multiclass": {"column": "y", "task": "multiclass", "classes": CLASSES},
        "regression": {"column": "y", "task": "regression"},
    }[task]
    y_column = {"binary": {"name": "y", "type": "category", "allowed": ["yes", "no"]},
                "multiclass": {"name": "y", "type": "category", "allowed": sorted(CLASSES)},
                "regression": {"name": "y", "type": "float"}}[task]
    data = {
        "name": f"synthetic_{task}",
        "sources": [{"name": "rows", "kind": "file", "url": "rows.parquet"}],
        "key": "id",
        "target": target,
        "columns": [{"name": "id", "type": "int"}, {"name": "x1", "type": "float"}, {"name": "x2", "type": "float"},
                    {"name": "c", "type": "category", "allowed": ["a", "b", "c"]}, y_column],
        "training": {"candidates": CANDIDATES[task], "cv_folds": 3, "min_rows": 100, **(training or {})},
        **top,
    }
    return parse_spec(data, "test")


def frame_for(task: str, n: int, seed: int) -> pd.DataFrame:
    """Rows of a known model: y depends on x1, x2 and c (regression noise N(0, 1))."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["a", "b", "c"], size=n)
    signal = 1.5 * x1 - 1.0 * x2 + np.select([c == "a", c == "b"], [0.5, -0.5], 0.0)
    if task == "binary":
        y: Any = np.where(rng.random(n) < 1 / (1 + np.exp(-(signal - 1.0))), "yes", "no")
    elif task == "multiclass":
        noisy = signal + rng.logistic(size=n) * 0.5
        y = np.select([noisy < -1.0, noisy > 1.0], ["low", "high"], "mid")
    else:
        y = 10.0 + 2.0 * signal + rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(n), "x1": x1, "x2": x2, "c": pd.Series(c, dtype=object), "y": y})


def config(candidate: str, **params: Any) -> dict[str, Any]:
    return {"config_id": f"{candidate}-test", "candidate": candidate, "params": params}


pytestmark = pytest.mark.usefixtures("one_thread")  # direct fits run single-threaded (conftest)


# --- estimators and search plan ---------------------------------------------------------------------------


def test_each_task_gets_its_kind_of_estimator_with_crispflow_s_fixed_parameters() -> None:
    multi, reg = spec_for("multiclass"), spec_for("regression")
    logreg = _estimator(multi, multi.training.candidates[0], {"C": 0.1})
    assert type(logreg).__name__ == "LogisticRegression"
    assert logreg.get_params()["class_weight"] == "balanced" and logreg.random_state == multi.split.seed
    hgb = _estimator(reg, reg.training.candidates[1], {})
    assert type(hgb).__name__ == "HistGradientBoostingRegressor"
    assert hgb.early_stopping is False and hgb.random_state == reg.split.seed
    assert "class_weight" not in hgb.get_params()  # a regressor has no class weights to set
    ridge = _estimator(reg, reg.training.candidates[0], {"alpha": 3.0})
    assert type(ridge).__name__ == "Ridge" and ridge.alpha == 3.0


def test_grids_are_checked_against_the_task_s_estimator() -> None:
    reg = spec_for("regression")
    with pytest.raises(SpecError, match=r"candidates\[ridge\]: unknown parameter 'C' for ridge"):
        _estimator(reg, reg.training.candidates[0], {"C": 1.0})
    with pytest.raises(SpecError, match=r"'random_state' is set by split.seed"):
        _estimator(reg, reg.training.candidates[1], {"random_state": 1})
    with pytest.raises(SpecError, match=r"candidates\[ridge\]: invalid parameters"):
        _estimator(reg, reg.training.candidates[0], {"alpha": -1.0})
    plan = plan_search(reg)
    assert [c["candidate"] for c in plan] == ["ridge", "hgb", "ridge"]  # round-robin until the grids run out


def test_an_import_path_estimator_is_used_as_named() -> None:
    reg = spec_for("regression", training={"candidates": [
        {"name": "lasso", "estimator": "sklearn.linear_model.Lasso", "grid": {"alpha": [0.01]}}]})
    model = build_model(reg, reg.training.candidates[0], {"alpha": 0.01})
    assert type(model.named_steps["model"]).__name__ == "Lasso"
    assert model.named_steps["model"].random_state == reg.split.seed  # Lasso has random_state: crispflow sets it


# --- holdout ----------------------------------------------------------------------------------------------


def test_regression_splits_at_random_and_rejects_a_stratified_split() -> None:
    reg = spec_for("regression")
    assert reg.split.strategy == "random"  # the regression default
    frame = frame_for("regression", 1000, seed=1)
    train, holdout = holdout_split(reg, frame)
    assert len(holdout) == 200 and len(train) == 800
    assert not set(train["id"]) & set(holdout["id"])
    again_train, again_holdout = holdout_split(reg, frame)
    assert again_holdout.index.equals(holdout.index) and again_train.index.equals(train.index)
    other = holdout_split(spec_for("regression", split={"seed": 7}), frame)[1]
    assert not other.index.equals(holdout.index)
    with pytest.raises(SpecError, match=r"split\.strategy: 'stratified' needs a class label"):
        spec_for("regression", split={"strategy": "stratified"})


def test_multiclass_stratified_holdout_keeps_each_class_share() -> None:
    multi = spec_for("multiclass")
    frame = frame_for("multiclass", 3000, seed=2)
    train, holdout = holdout_split(multi, frame)
    share = np.bincount(labels(multi, frame), minlength=3) / len(frame)
    assert np.abs(np.bincount(labels(multi, holdout), minlength=3) / len(holdout) - share).max() < 0.005
    assert np.abs(np.bincount(labels(multi, train), minlength=3) / len(train) - share).max() < 0.005


def test_random_split_serves_classification_too() -> None:
    binary = spec_for("binary", split={"strategy": "random", "holdout_fraction": 0.25})
    train, holdout = holdout_split(binary, frame_for("binary", 800, seed=3))
    assert len(holdout) == 200 and len(train) == 600


def test_feature_labels_follow_the_task() -> None:
    multi = spec_for("multiclass")
    frame = frame_for("multiclass", 50, seed=4)
    codes = features_module.labels(multi, frame)
    assert codes.dtype == np.int64
    assert [CLASSES[k] for k in codes] == frame["y"].tolist()
    reg = spec_for("regression")
    assert features_module.labels(reg, frame_for("regression", 5, seed=4)).dtype == np.float64


# --- cross-validation and selection -----------------------------------------------------------------------


def test_multiclass_cv_log_loss_beats_the_class_prior() -> None:
    multi = spec_for("multiclass")
    frame = frame_for("multiclass", 900, seed=5)
    result = cross_validate(multi, config("logreg", C=1.0), frame)
    assert result["metric"] == "log_loss" and len(result["folds"]) == 3
    y = labels(multi, frame)
    prior = np.bincount(y, minlength=3) / len(y)
    no_skill = log_loss(y, np.tile(prior, (len(y), 1)), labels=[0, 1, 2])
    assert result["mean"] < 0.8 * no_skill
    assert cross_validate(multi, config("logreg", C=1.0), frame)["folds"] == result["folds"]  # deterministic


def test_regression_cv_rmse_is_close_to_the_noise_level() -> None:
    reg = spec_for("regression")
    frame = frame_for("regression", 900, seed=6)
    result = cross_validate(reg, config("ridge", alpha=0.1), frame)
    assert result["metric"] == "rmse"
    assert 0.9 < result["mean"] < 1.15  # the noise is N(0, 1) and the model is linear in the features
    r2 = cross_validate(spec_for("regression", training={"selection_metric": "r2"}), config("ridge", alpha=0.1),
                        frame)
    assert r2["mean"] > 0.9


@pytest.mark.parametrize(("metric", "best"), [("log_loss", "a"), ("rmse", "a"), ("mae", "a"), ("r2", "b"),
                                              ("macro_f1", "b")])
def test_best_config_follows_the_metric_s_direction(metric, best) -> None:
    results = [{"config_id": cid, "metric": metric, "mean": mean, "std": 0.0} for cid, mean in (("a", 0.3),
                                                                                                 ("b", 0.6))]
    assert best_config(results)["config_id"] == best


# --- final fit --------------------------------------------------------------------------------------------


def test_multiclass_final_model_is_calibrated_with_code_classes_and_no_threshold() -> None:
    multi = spec_for("multiclass")
    train, fresh = frame_for("multiclass", 1500, seed=7), frame_for("multiclass", 1500, seed=8)
    model, threshold, info = fit_final(multi, config("logreg", C=1.0), train)
    assert threshold is None
    assert type(model).__name__ == "CalibratedClassifierCV" and model.classes_.tolist() == [0, 1, 2]
    assert info["class_counts"] == {c: int((train["y"] == c).sum()) for c in CLASSES}
    output = model_output(multi, model, features(multi, fresh))
    assert output.shape == (len(fresh), 3) and np.allclose(output.sum(axis=1), 1)
    y = labels(multi, fresh)
    assert (predicted_class(output) == y).mean() > 0.65
    for code, name in enumerate(CLASSES):  # column k is P(CLASSES[k]): on that class's rows, the likeliest column
        assert output[y == code].mean(axis=0).argmax() == code, name
    high = fresh["x1"] - fresh["x2"] > 2.5
    assert (output[high.to_numpy(), CLASSES.index("high")] > 0.5).mean() > 0.9
    assert math.isfinite(info["oof_metric"]) and info["oof_metric"] < log_loss(y, output) + 0.1


def test_uncalibrated_multiclass_and_binary_still_fit() -> None:
    multi = spec_for("multiclass", training={"calibration": None})
    model, threshold, info = fit_final(multi, config("forest", n_estimators=20, max_depth=4),
                                       frame_for("multiclass", 600, seed=9))
    assert threshold is None and type(model).__name__ == "Pipeline" and math.isfinite(info["oof_metric"])
    binary = spec_for("binary", training={"calibration": None})
    model, threshold, info = fit_final(binary, config("logreg", C=1.0), frame_for("binary", 600, seed=9))
    assert 0 < threshold < 1 and info["positives"] == int((frame_for("binary", 600, seed=9)["y"] == "yes").sum())


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize("candidate", [config("logreg", C=1.0), config("forest", n_estimators=20, max_depth=4)])
def test_out_of_fold_scores_are_calibrated_exactly_as_the_model_calibrates(task, method, candidate) -> None:
    """The threshold is chosen on OOF scores passed through the fitted calibrator: that must be the map the model
    applies at scoring time (the calibrator takes the decision function when there is one, not probabilities)."""
    spec = spec_for(task, training={"calibration": method})
    frame = frame_for(task, 600, seed=10)
    model, _, _ = fit_final(spec, candidate, frame)
    inner, x = model.calibrated_classifiers_[0].estimator, features(spec, frame)
    raw = inner.decision_function(x) if hasattr(inner, "decision_function") else inner.predict_proba(x)
    assert np.allclose(_calibrated(model, raw), model.predict_proba(x))


def test_binary_cost_threshold_lands_near_the_bayes_threshold() -> None:
    """Calibrated probabilities and costs FN = 5, FP = 1: the cost-optimal cut is p = 1/6."""
    binary = spec_for("binary", training={"threshold": {"objective": "cost", "cost_false_negative": 5.0}})
    train, fresh = frame_for("binary", 4000, seed=11), frame_for("binary", 20000, seed=12)
    model, threshold, info = fit_final(binary, config("logreg", C=1.0), train)
    assert abs(threshold - 1 / 6) < 0.05, threshold
    p, y = model_output(binary, model, features(binary, fresh)), labels(binary, fresh)

    def cost(t: float) -> float:
        return float((5 * (y & (p < t)) + (~y & (p >= t))).mean())

    assert cost(threshold) < min(cost(t) for t in np.linspace(0.01, 0.99, 99)) + 0.01
    assert info["threshold_objective"] == pytest.approx(cost(threshold), abs=0.03)


def test_regression_final_model_has_a_conformal_interval_and_no_threshold() -> None:
    reg = spec_for("regression")
    model, threshold, info = fit_final(reg, config("hgb", max_iter=30, learning_rate=0.1),
                                       frame_for("regression", 600, seed=13))
    assert threshold is None and type(model).__name__ == "Pipeline"  # never calibrated
    assert info["interval"]["coverage"] == 0.9 and info["interval"]["method"] == "split_conformal_oof"
    assert info["interval"]["halfwidth"] > 0 and info["metric"] == "rmse" and info["task"] == "regression"


def test_90_percent_conformal_intervals_cover_90_percent_of_fresh_rows() -> None:
    reg = spec_for("regression", training={"cv_folds": 5})
    train, fresh = frame_for("regression", 4000, seed=14), frame_for("regression", 20000, seed=15)
    model, _, info = fit_final(reg, config("ridge", alpha=0.1), train)
    halfwidth = info["interval"]["halfwidth"]
    prediction = model_output(reg, model, features(reg, fresh))
    covered = np.abs(labels(reg, fresh) - prediction) <= halfwidth
    assert 0.88 <= covered.mean() <= 0.92, covered.mean()
    assert halfwidth == pytest.approx(1.645, abs=0.1)  # the N(0, 1) noise's 90 % two-sided quantile


def test_interval_coverage_is_read_from_the_spec() -> None:
    frame = frame_for("regression", 2000, seed=16)
    narrow = fit_final(spec_for("regression", training={"interval_coverage": 0.5}), config("ridge", alpha=0.1),
                       frame)[2]["interval"]
    wide = fit_final(spec_for("regression", training={"interval_coverage": 0.99}), config("ridge", alpha=0.1),
                     frame)[2]["interval"]
    assert narrow["coverage"] == 0.5 and wide["coverage"] == 0.99
    assert narrow["halfwidth"] == pytest.approx(0.674, abs=0.1) and wide["halfwidth"] == pytest.approx(2.576, abs=0.3)


def test_conformal_halfwidth_is_the_finite_sample_quantile() -> None:
    residuals = np.arange(1.0, 20.0)  # n = 19: ceil(20 * 0.9) = 18th smallest
    assert conformal_halfwidth(residuals, 0.9) == 18.0
    assert conformal_halfwidth(-residuals, 0.9) == 18.0  # absolute residuals
    assert conformal_halfwidth(residuals, 0.5) == 10.0  # ceil(20 * 0.5) = 10th
    from crispflow.errors import CrispflowError

    with pytest.raises(CrispflowError, match="too few for 90% coverage"):
        conformal_halfwidth(np.ones(5), 0.9)
    with pytest.raises(CrispflowError, match="finite residuals"):
        conformal_halfwidth(np.array([1.0, np.nan]), 0.5)
