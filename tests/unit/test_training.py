"""Training: the model pipeline, holdout, search plan, cross-validation, final fit and threshold, on the demo data."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from crispflow.data.extracts import conform, new_rejections
from crispflow.errors import CrispflowError, SpecError
from crispflow.model.features import features, labels
from crispflow.model.holdout import holdout_hash, holdout_split
from crispflow.model.training import (
    best_config,
    build_model,
    choose_threshold,
    cross_validate,
    fit_final,
    plan_search,
    positive_proba,
)
from crispflow.spec import PipelineSpec, Threshold, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "include" / "data" / "lending_club.parquet"
DEMO = ROOT / "include" / "pipelines" / "lending_club.yaml"


def spec_with(**sections: dict[str, Any]) -> PipelineSpec:
    """The demo spec with some keys of its top-level sections replaced (validated like any spec)."""
    data = yaml.safe_load(DEMO.read_text())
    for section, changes in sections.items():
        data[section] = {**data[section], **changes}
    return parse_spec(data, "test")


def config(candidate: str, **params: Any) -> dict[str, Any]:
    return {"config_id": f"{candidate}-test", "candidate": candidate, "params": params}


pytestmark = pytest.mark.usefixtures("one_thread")  # direct fits run single-threaded (conftest)


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return load_spec("lending_club")


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_parquet(DATA)


@pytest.fixture(scope="module")
def published(spec, raw) -> pd.DataFrame:
    """The demo data typed as the data phase publishes it (Int64 / float64 / object / datetime64)."""
    return conform(spec, raw, new_rejections())


@pytest.fixture(scope="module")
def split(spec, published) -> tuple[pd.DataFrame, pd.DataFrame]:
    return holdout_split(spec, published)


@pytest.fixture(scope="module")
def logreg(spec, split):
    train, _ = split
    model = build_model(spec, spec.training.candidates[0], {"C": 0.1})
    return model.fit(features(spec, train), labels(spec, train))


# --- the pipeline -----------------------------------------------------------------------------------------


def test_features_and_labels(spec, published) -> None:
    X = features(spec, published)
    y = labels(spec, published)
    assert list(X.columns) == spec.feature_columns
    assert y.dtype == bool and y.sum() == (published["Class"] == "bad").sum()
    with pytest.raises(CrispflowError, match="int_rate"):
        features(spec, published.drop(columns=["int_rate"]))


@pytest.mark.parametrize(("candidate", "params"), [("logreg", {"C": 1.0}), ("hgb", {"max_iter": 30})])
def test_pipeline_fits_and_predicts_probabilities(spec, split, candidate, params) -> None:
    train, holdout = split
    cand = next(c for c in spec.training.candidates if c.name == candidate)
    model = build_model(spec, cand, params).fit(features(spec, train), labels(spec, train))
    proba = model.predict_proba(features(spec, holdout))
    assert proba.shape == (len(holdout), 2)
    assert np.allclose(proba.sum(axis=1), 1) and ((proba >= 0) & (proba <= 1)).all()
    assert roc_auc_score(labels(spec, holdout), positive_proba(model, features(spec, holdout))) > 0.6


def test_scores_nullable_dtypes_missing_values_and_unseen_categories(spec, split, raw, logreg) -> None:
    _, holdout = split
    odd = holdout.head(6).copy()
    assert odd["delinq_2yrs"].dtype == "Int64" and odd["sub_grade"].dtype == object
    odd.loc[odd.index[0], "delinq_2yrs"] = pd.NA
    odd.loc[odd.index[1], "sub_grade"] = "Z9"  # never seen in training
    odd.loc[odd.index[2], "addr_state"] = None
    odd.loc[odd.index[3], "annual_inc"] = np.nan
    odd.loc[odd.index[4], "term"] = "term_99"
    proba = positive_proba(logreg, features(spec, odd))
    assert np.isfinite(proba).all() and ((proba > 0) & (proba < 1)).all()
    # trained on published dtypes, the model scores the raw file's dtypes (int64, pandas str) identically
    same_rows = raw.set_index("loan_id").loc[holdout["loan_id"]].reset_index()
    assert np.array_equal(
        positive_proba(logreg, features(spec, same_rows)), positive_proba(logreg, features(spec, holdout))
    )


def test_datetime_and_bool_features_are_expanded_and_encoded(raw) -> None:
    data = yaml.safe_load(DEMO.read_text())
    data["columns"] += [
        {"name": "last_payment", "type": "datetime", "nullable": True},
        {"name": "autopay", "type": "bool", "nullable": True},
    ]
    wide_spec = parse_spec(data, "test")
    rng = np.random.default_rng(0)
    frame = raw.head(600).assign(
        last_payment=pd.Series(pd.to_datetime("2025-01-01") + pd.to_timedelta(rng.integers(0, 400, 600), "D")),
        autopay=pd.array(rng.random(600) < 0.5, dtype="boolean"),
    )
    frame.loc[[3, 5], "last_payment"] = pd.NaT
    frame.loc[[4, 6], "autopay"] = pd.NA
    model = build_model(wide_spec, wide_spec.training.candidates[0], {}).fit(
        features(wide_spec, frame), labels(wide_spec, frame)
    )
    names = list(model.named_steps["preprocess"].get_feature_names_out())
    assert {"num__last_payment__year", "num__last_payment__month", "num__last_payment__day_of_week"} <= set(names)
    assert "num__missingindicator_last_payment__month" in names
    assert {"cat__autopay_False", "cat__autopay_True"} <= set(names)
    assert not any("application_month" in n for n in names)  # the time column is never a feature
    assert np.isfinite(positive_proba(model, features(wide_spec, frame))).all()


def test_preprocessing_travels_with_the_pickled_model(spec, split, logreg) -> None:
    _, holdout = split
    restored = pickle.loads(pickle.dumps(logreg))
    assert restored.steps[0][0] == "preprocess"
    assert np.array_equal(
        restored.predict_proba(features(spec, holdout)), logreg.predict_proba(features(spec, holdout))
    )


def test_unknown_or_reserved_hyperparameter_is_a_spec_error(spec) -> None:
    logreg_candidate = spec.training.candidates[0]
    with pytest.raises(SpecError, match=r"candidates\[logreg\]: unknown parameter 'Cee'"):
        build_model(spec, logreg_candidate, {"Cee": 1.0})
    with pytest.raises(SpecError, match=r"'class_weight' is set by training.class_weight"):
        build_model(spec, logreg_candidate, {"class_weight": None})
    with pytest.raises(SpecError, match=r"candidates\[logreg\]: invalid parameters"):
        build_model(spec, logreg_candidate, {"C": -1.0})
    typo = spec_with(
        training={
            "candidates": [{"name": "hgb", "estimator": "hist_gradient_boosting", "grid": {"learning_rat": [0.1]}}]
        }
    )
    with pytest.raises(SpecError, match=r"candidates\[hgb\]: unknown parameter 'learning_rat'"):
        plan_search(typo)


# --- holdout ----------------------------------------------------------------------------------------------


def test_time_holdout_is_the_latest_whole_months(spec, published, split) -> None:
    train, holdout = split
    assert len(train) + len(holdout) == len(published)
    train_months = set(train["application_month"])
    holdout_months = set(holdout["application_month"])
    assert not train_months & holdout_months  # no month is split
    assert min(holdout_months) > max(train_months)
    assert sorted(holdout_months) == sorted(published["application_month"].unique())[-3:]
    assert len(holdout) >= 0.2 * len(published)  # the smallest number of latest months reaching the fraction
    assert len(holdout) - (holdout["application_month"] == min(holdout_months)).sum() < 0.2 * len(published)
    one_month = published[published["application_month"] == min(holdout_months)]
    with pytest.raises(CrispflowError, match="leaving none for training"):
        holdout_split(spec, one_month)


def test_stratified_holdout_keeps_the_positive_rate(published) -> None:
    strat = spec_with(split={"strategy": "stratified"})
    train, holdout = holdout_split(strat, published)
    rate = labels(strat, published).mean()
    assert abs(labels(strat, holdout).mean() - rate) < 0.01
    assert abs(labels(strat, train).mean() - rate) < 0.01
    assert len(holdout) == pytest.approx(0.2 * len(published), abs=1)
    again_train, again_holdout = holdout_split(strat, published)
    assert again_holdout.index.equals(holdout.index) and again_train.index.equals(train.index)
    assert not set(train["loan_id"]) & set(holdout["loan_id"])


def test_holdout_hash_is_stable_and_content_sensitive(spec, split, tmp_path) -> None:
    _, holdout = split  # object text columns, as conform publishes them
    digest = holdout_hash(spec, holdout)
    assert digest == holdout_hash(spec, holdout.copy())
    assert digest == holdout_hash(spec, holdout.sample(frac=1, random_state=1))  # row order does not matter
    holdout.to_parquet(tmp_path / "holdout.parquet")
    assert digest == holdout_hash(spec, pd.read_parquet(tmp_path / "holdout.parquet"))  # stored copy: same hash
    changed = holdout.copy()
    changed.loc[changed.index[10], "int_rate"] += 0.01
    assert holdout_hash(spec, changed) != digest
    assert holdout_hash(spec, holdout.iloc[1:]) != digest


# --- search plan ------------------------------------------------------------------------------------------


def test_plan_search_is_deterministic_round_robin_and_within_budget(spec) -> None:
    plan = plan_search(spec)
    assert plan == plan_search(spec)
    assert json.loads(json.dumps(plan)) == plan
    assert len(plan) == spec.training.search_budget == 8
    assert [c["candidate"] for c in plan] == ["logreg", "hgb"] * 4
    assert len({c["config_id"] for c in plan}) == len(plan)
    assert len({json.dumps([c["candidate"], c["params"]], sort_keys=True) for c in plan}) == len(plan)
    assert [c["candidate"] for c in plan_search(spec, budget=3)] == ["logreg", "hgb", "logreg"]
    assert plan_search(spec, budget=3) == plan[:3]
    big = plan_search(spec, budget=10)  # logreg's grid (4) is smaller than its share: all of it, hgb gets 6
    assert sorted(c["params"]["C"] for c in big if c["candidate"] == "logreg") == [0.01, 0.1, 1.0, 10.0]
    assert sum(c["candidate"] == "hgb" for c in big) == 6
    assert len(plan_search(spec, budget=100)) == 4 + 8  # the whole space, once
    reseeded = plan_search(spec_with(split={"seed": 7}))
    assert {c["config_id"] for c in reseeded} != {c["config_id"] for c in plan}


# --- cross-validation and selection -----------------------------------------------------------------------


def test_cross_validate_average_precision_is_well_above_the_base_rate(spec, split) -> None:
    train, _ = split
    result = cross_validate(spec, config("logreg", C=0.1), train)
    assert json.loads(json.dumps(result)) == result
    assert result["metric"] == "average_precision" and len(result["folds"]) == spec.training.cv_folds
    base_rate = labels(spec, train).mean()
    assert 0.04 < base_rate < 0.06
    assert result["mean"] > 2 * base_rate
    assert result["mean"] == pytest.approx(np.mean(result["folds"])) and result["std"] < 0.05
    assert result["fit_seconds"] > 0
    again = cross_validate(spec, config("logreg", C=0.1), train)
    assert again["folds"] == result["folds"]  # deterministic: same seed, same folds, same fits


def test_shuffled_labels_give_chance_level_roc_auc(split) -> None:
    """Label leakage check: if the features predicted shuffled labels, something would leak the target."""
    train, _ = split
    auc_spec = spec_with(training={"selection_metric": "roc_auc"})
    shuffled = train.assign(Class=np.random.default_rng(0).permutation(train["Class"].to_numpy()))
    result = cross_validate(auc_spec, config("logreg", C=1.0), shuffled)
    assert abs(result["mean"] - 0.5) <= 0.06, result


def test_undefined_fold_metrics_are_nan_and_never_selected(split) -> None:
    train, _ = split
    auc_spec = spec_with(training={"selection_metric": "roc_auc"})
    tiny = pd.concat([train[train["Class"] == "good"].head(200), train[train["Class"] == "bad"].head(3)])
    with pytest.warns(UserWarning, match="least populated class"):
        result = cross_validate(auc_spec, config("logreg", C=1.0), tiny)
    assert sum(math.isnan(f) for f in result["folds"]) == 2  # two validation folds hold no positive
    assert math.isnan(result["mean"])
    good = {**result, "config_id": "ok", "folds": [0.6], "mean": 0.6, "std": 0.0}
    assert best_config([result, good])["config_id"] == "ok"


def test_best_config_ranks_by_mean_then_std_then_id() -> None:
    def r(cid: str, mean: float, std: float) -> dict[str, Any]:
        return {"config_id": cid, "metric": "average_precision", "mean": mean, "std": std}

    assert best_config([r("a", 0.10, 0.01), r("b", 0.12, 0.05), r("c", math.nan, math.nan)])["config_id"] == "b"
    assert best_config([r("a", 0.12, 0.02), r("b", 0.12, 0.01)])["config_id"] == "b"
    assert best_config([r("b", 0.12, 0.01), r("a", 0.12, 0.01)])["config_id"] == "a"
    brier = [{**r("a", 0.05, 0.0), "metric": "brier"}, {**r("b", 0.04, 0.0), "metric": "brier"}]
    assert best_config(brier)["config_id"] == "b"  # lower is better
    with pytest.raises(CrispflowError, match="no configuration has a finite CV mean"):
        best_config([r("a", math.nan, math.nan), r("b", math.inf, 0.0)])


# --- final fit and threshold ------------------------------------------------------------------------------


def test_fit_final_calibrates_chooses_a_threshold_and_scores(split) -> None:
    train, holdout = split
    fast = spec_with(training={"cv_folds": 3})
    model, threshold, info = fit_final(fast, config("logreg", C=0.1), train)
    assert 0 < threshold < 1
    assert info["n_train"] == len(train) and info["positives"] == labels(fast, train).sum()
    assert info["oof_metric"] > 2 * info["positives"] / info["n_train"]
    # cost per row at the threshold beats flagging nothing (every positive missed) and flagging everything
    costs = fast.training.threshold
    assert info["threshold_objective"] < costs.cost_false_negative * info["positives"] / info["n_train"]
    assert info["threshold_objective"] < costs.cost_false_positive * (1 - info["positives"] / info["n_train"])
    proba = positive_proba(model, features(fast, holdout))
    assert type(model).__name__ == "CalibratedClassifierCV"
    assert proba.mean() < 0.2  # calibrated to the base rate, not to class_weight="balanced"
    assert roc_auc_score(labels(fast, holdout), proba) > 0.6
    assert np.array_equal(
        pickle.loads(pickle.dumps(model)).predict_proba(features(fast, holdout)),
        model.predict_proba(features(fast, holdout)),
    )


def _synthetic(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.2
    score = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1).round(2)  # rounded: many ties
    return y, score


def _objective(y: np.ndarray, flagged: np.ndarray, spec: Threshold) -> float:
    tp, fp, fn = (flagged & y).sum(), (flagged & ~y).sum(), (~flagged & y).sum()
    if spec.objective == "f1":
        return 2 * tp / (2 * tp + fp + fn)
    return -(spec.cost_false_positive * fp + spec.cost_false_negative * fn)  # higher is better here


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "objective",
    [
        Threshold(objective="f1"),
        Threshold(objective="cost", cost_false_negative=5.0),
        Threshold(objective="cost", cost_false_positive=3.0),
    ],
)
def test_choose_threshold_matches_brute_force(seed, objective) -> None:
    y, score = _synthetic(seed)
    threshold = choose_threshold(y, score, objective)
    assert 0 < threshold < 1
    candidates = [*np.unique(score), np.inf]  # flag score >= t, for every distinct t, or nothing
    best = max(_objective(y, score >= t, objective) for t in candidates)
    assert _objective(y, score >= threshold, objective) == pytest.approx(best)


def test_costlier_misses_lower_the_threshold() -> None:
    y, score = _synthetic(3, n=2000)
    even = choose_threshold(y, score, Threshold(objective="cost", cost_false_negative=1.0))
    costly_misses = choose_threshold(y, score, Threshold(objective="cost", cost_false_negative=5.0))
    assert costly_misses < even


def test_choose_threshold_rejects_bad_input() -> None:
    with pytest.raises(CrispflowError, match="at least one positive"):
        choose_threshold(np.zeros(5, dtype=bool), np.linspace(0, 1, 5), Threshold(objective="f1"))
    with pytest.raises(CrispflowError, match=r"probabilities in \[0, 1\]"):
        choose_threshold(np.ones(2, dtype=bool), np.array([0.5, np.nan]), Threshold())
