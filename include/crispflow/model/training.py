"""Model selection and fitting: search plan, cross-validation, calibration and decision threshold (the holdout is
in crispflow.model.holdout).

Pure pandas / numpy / scikit-learn, never Airflow or MLflow. Deterministic given `split.seed`: the search plan,
the CV folds, the calibration folds and the estimators' random state all derive from it. pandas and
scikit-learn are imported inside the functions that use them, so importing this module at DAG parse time is cheap.

What travels between tasks (search plan, CV results) is plain JSON-serialisable data: configs are
`{"config_id", "candidate", "params"}`; CV results add `metric`, `folds`, `mean`, `std`, `fit_seconds`. A fold
metric that is undefined (a validation fold with one class, non-finite probabilities) is NaN, which Python's json
writes as the (non-standard) token `NaN`.

The decision rule everywhere is: positive iff calibrated probability >= threshold.

Fits run with native thread pools (BLAS, OpenMP) limited to `CRISPFLOW_TRAIN_THREADS` (default 1; see
crispflow.native_threads): the search parallelises across mapped tasks instead.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from crispflow.errors import CrispflowError, SpecError
from crispflow.native_threads import thread_limit

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline

    from crispflow.spec import Candidate, PipelineSpec, Threshold, Training

LOGREG_MAX_ITER = 5000
LOWER_IS_BETTER = frozenset({"brier"})
RANKING_METRICS = frozenset({"roc_auc", "average_precision"})
# Estimator parameters crispflow sets itself: a grid may not override them.
RESERVED_PARAMS = {
    "class_weight": "training.class_weight",
    "random_state": "split.seed",
    "early_stopping": "crispflow (always off, for determinism)",
}


# --- spec helpers -----------------------------------------------------------------------------------------


def _training(spec: PipelineSpec) -> Training:
    if spec.training is None:
        raise SpecError(f"{spec.name}: training: the spec has no training section")
    return spec.training


def _candidate(spec: PipelineSpec, name: str) -> Candidate:
    for candidate in _training(spec).candidates:
        if candidate.name == name:
            return candidate
    raise SpecError(f"{spec.name}: training.candidates: no candidate named {name!r}")


# --- the model --------------------------------------------------------------------------------------------


def _base_estimator(spec: PipelineSpec, estimator: str) -> BaseEstimator:
    class_weight = _training(spec).class_weight
    if estimator == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=LOGREG_MAX_ITER, class_weight=class_weight, random_state=spec.split.seed)
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(class_weight=class_weight, early_stopping=False, random_state=spec.split.seed)


def _estimator(spec: PipelineSpec, candidate: Candidate, params: dict[str, Any]) -> BaseEstimator:
    """The candidate's estimator with `params` set; unknown, reserved or invalid parameters are SpecErrors."""
    where = f"{spec.name}: training.candidates[{candidate.name}]"
    est = _base_estimator(spec, candidate.estimator)
    valid = est.get_params(deep=False)
    for name in params:
        if name in RESERVED_PARAMS:
            raise SpecError(f"{where}: parameter {name!r} is set by {RESERVED_PARAMS[name]}, not by the grid")
        if name not in valid:
            allowed = sorted(set(valid) - set(RESERVED_PARAMS))
            raise SpecError(f"{where}: unknown parameter {name!r} for {candidate.estimator} (known: {allowed})")
    est.set_params(**params)
    try:
        est._validate_params()  # sklearn's own type/range check, run now rather than at fit time
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: invalid parameters {params}: {exc}") from None
    return est


def build_model(spec: PipelineSpec, candidate: Candidate, params: dict[str, Any]) -> Pipeline:
    """An unfitted Pipeline: the spec's preprocessing (crispflow.model.features), then the candidate's
    estimator."""
    from sklearn.pipeline import Pipeline

    from crispflow.model.features import build_preprocessor

    return Pipeline([("preprocess", build_preprocessor(spec)), ("model", _estimator(spec, candidate, params))])


def _folds(spec: PipelineSpec) -> StratifiedKFold:
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=_training(spec).cv_folds, shuffle=True, random_state=spec.split.seed)


def _final_estimator(spec: PipelineSpec, config: dict[str, Any]) -> ClassifierMixin:
    """The config's pipeline, wrapped in CalibratedClassifierCV (k folds, seeded) when the spec calibrates.

    `ensemble=False`: the calibrator is fitted on out-of-fold scores and one pipeline is fitted on all rows
    (k + 1 fits, one pipeline in the artifact) instead of an ensemble of k calibrated pipelines."""
    model = build_model(spec, _candidate(spec, config["candidate"]), config["params"])
    method = _training(spec).calibration
    if method is None:
        return model
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(model, method=method, cv=_folds(spec), ensemble=False)


def positive_proba(model: ClassifierMixin, X: pd.DataFrame) -> np.ndarray:
    """P(positive) from a fitted classifier trained on boolean labels."""
    proba = model.predict_proba(X)
    return proba[:, list(model.classes_).index(True)]


# --- search plan ------------------------------------------------------------------------------------------


def _grid(spec: PipelineSpec, candidate: Candidate) -> list[tuple[int, dict[str, Any]]]:
    """The candidate's grid as (position, params): parameter names sorted, values in spec order, no duplicates."""
    names = sorted(candidate.grid)
    for name in names:
        if not candidate.grid[name]:
            raise SpecError(f"{spec.name}: training.candidates[{candidate.name}].grid.{name}: no values")
    seen: set[str] = set()
    out: list[tuple[int, dict[str, Any]]] = []
    for values in itertools.product(*(candidate.grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        canonical = json.dumps(params, sort_keys=True, default=str)
        if canonical not in seen:
            seen.add(canonical)
            out.append((len(out), params))
    return out


def plan_search(spec: PipelineSpec, budget: int | None = None) -> list[dict[str, Any]]:
    """Up to `budget` (default `training.search_budget`) configs, round-robin over the candidates in spec order.

    Each candidate's grid is shuffled with a seed from `split.seed` and the candidate's name; a candidate whose
    grid runs out leaves its turns to the others. `config_id` is `<candidate>-<n>` with n the position in the
    candidate's full grid, so an id always means the same parameters for a given grid. Every planned config is
    validated (unknown or invalid parameters raise SpecError here, before any fit).
    """
    training = _training(spec)
    budget = training.search_budget if budget is None else budget
    if budget < 1:
        raise SpecError(f"{spec.name}: training.search_budget: must be at least 1, got {budget}")
    queues = []
    for candidate in training.candidates:
        grid = _grid(spec, candidate)
        random.Random(f"{spec.split.seed}/{candidate.name}").shuffle(grid)
        queues.append(
            [{"config_id": f"{candidate.name}-{n}", "candidate": candidate.name, "params": p} for n, p in grid]
        )
    plan: list[dict[str, Any]] = []
    while len(plan) < budget and any(queues):
        for queue in queues:
            if queue and len(plan) < budget:
                plan.append(queue.pop(0))
    for config in plan:
        build_model(spec, _candidate(spec, config["candidate"]), config["params"])
    return plan


# --- metrics and cross-validation -------------------------------------------------------------------------


def metric_value(metric: str, y_true: np.ndarray, proba: np.ndarray) -> float:
    """One of the spec's metrics from probabilities; f1/precision/recall at 0.5. NaN when undefined
    (no rows, non-finite probabilities, or a ranking metric on a single class)."""
    from sklearn import metrics

    y, p = np.asarray(y_true, dtype=bool), np.asarray(proba, dtype=float)
    if y.size == 0 or not np.all(np.isfinite(p)):
        return math.nan
    if metric in RANKING_METRICS:
        if y.all() or not y.any():
            return math.nan
        fn = metrics.roc_auc_score if metric == "roc_auc" else metrics.average_precision_score
        return float(fn(y, p))
    if metric == "brier":
        return float(metrics.brier_score_loss(y, p, pos_label=True))
    scorer = {"f1": metrics.f1_score, "precision": metrics.precision_score, "recall": metrics.recall_score}[metric]
    return float(scorer(y, p >= 0.5, zero_division=0.0))


def cross_validate(spec: PipelineSpec, config: dict[str, Any], train: pd.DataFrame) -> dict[str, Any]:
    """Stratified k-fold CV (`training.cv_folds`, shuffled with `split.seed`) of one config's pipeline, scored
    with `training.selection_metric`. `fit_seconds` is the total fitting time over the folds."""
    from sklearn.base import clone

    from crispflow.model.features import features, labels

    training = _training(spec)
    model = build_model(spec, _candidate(spec, config["candidate"]), config["params"])
    X, y = features(spec, train), labels(spec, train)
    folds: list[float] = []
    fit_seconds = 0.0
    with thread_limit("CRISPFLOW_TRAIN_THREADS"):
        for fit_rows, val_rows in _folds(spec).split(np.zeros((len(y), 1)), y):
            start = time.perf_counter()
            fitted = clone(model).fit(X.iloc[fit_rows], y[fit_rows])
            fit_seconds += time.perf_counter() - start
            proba = positive_proba(fitted, X.iloc[val_rows])
            folds.append(metric_value(training.selection_metric, y[val_rows], proba))
    return {
        "config_id": config["config_id"],
        "candidate": config["candidate"],
        "params": config["params"],
        "metric": training.selection_metric,
        "folds": folds,
        "mean": float(np.mean(folds)),  # NaN if any fold is NaN
        "std": float(np.std(folds)),
        "fit_seconds": round(fit_seconds, 3),
    }


def best_config(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The result with the best mean (highest; lowest for brier), ties broken by lower std, then config_id.
    Results whose mean is not finite never win; if none is finite, CrispflowError."""
    finite = [r for r in results if isinstance(r.get("mean"), int | float) and math.isfinite(r["mean"])]
    if not finite:
        ids = [r.get("config_id") for r in results]
        raise CrispflowError(f"model selection: no configuration has a finite CV mean (tried {ids})")
    metrics = {r.get("metric") for r in finite}
    if len(metrics) > 1:
        raise CrispflowError(f"model selection: results mix metrics {sorted(map(str, metrics))}")
    sign = 1.0 if metrics.pop() in LOWER_IS_BETTER else -1.0

    def rank(r: dict[str, Any]) -> tuple[float, float, str]:
        std = r.get("std")
        finite_std = isinstance(std, int | float) and math.isfinite(std)
        return sign * r["mean"], std if finite_std else math.inf, r["config_id"]

    return min(finite, key=rank)


# --- final fit and threshold ------------------------------------------------------------------------------


def fit_final(
    spec: PipelineSpec, config: dict[str, Any], train: pd.DataFrame
) -> tuple[ClassifierMixin, float, dict[str, Any]]:
    """Fit the (calibrated) model on all of `train` and choose the threshold on out-of-fold probabilities.

    The out-of-fold scores come from the same seeded folds the calibrator was fitted on, passed through that
    calibrator: 2k + 1 fits in all. Returns (model, threshold, info); `info["threshold_objective"]` is the OOF
    F1, or the OOF cost per row, at the threshold."""
    from sklearn.base import clone

    from crispflow.model.features import features, labels

    training = _training(spec)
    model = _final_estimator(spec, config)
    base = build_model(spec, _candidate(spec, config["candidate"]), config["params"])
    X, y = features(spec, train), labels(spec, train)
    oof = np.full(len(y), np.nan)
    with thread_limit("CRISPFLOW_TRAIN_THREADS"):
        for fit_rows, val_rows in _folds(spec).split(np.zeros((len(y), 1)), y):
            oof[val_rows] = positive_proba(clone(base).fit(X.iloc[fit_rows], y[fit_rows]), X.iloc[val_rows])
        final = clone(model).fit(X, y)
    if training.calibration is not None:
        oof = final.calibrated_classifiers_[0].calibrators[0].predict(oof)
    threshold, objective = _best_threshold(y, oof, training.threshold)
    info = {
        "config_id": config["config_id"],
        "metric": training.selection_metric,
        "oof_metric": metric_value(training.selection_metric, y, oof),
        "threshold_objective": objective,
        "n_train": len(y),
        "positives": int(y.sum()),
    }
    return final, threshold, info


def _threshold_curve(y: np.ndarray, score: np.ndarray, spec: Threshold) -> tuple[np.ndarray, np.ndarray]:
    """(distinct scores, descending; objective per cut). Cut j flags the rows scoring >= the j-th distinct score;
    cut 0 flags none. Sorted once, counted with cumulative sums."""
    order = np.argsort(-score, kind="mergesort")
    ranked, hits = score[order], y[order]
    group_end = np.r_[ranked[1:] != ranked[:-1], True]  # last row of each run of equal scores
    tp = np.r_[0, np.cumsum(hits)[group_end]]
    fp = np.r_[0, np.cumsum(~hits)[group_end]]
    fn = int(y.sum()) - tp
    if spec.objective == "f1":
        return ranked[group_end], 2 * tp / (2 * tp + fp + fn)
    return ranked[group_end], spec.cost_false_positive * fp + spec.cost_false_negative * fn


def _best_threshold(y_true: np.ndarray, score: np.ndarray, spec: Threshold) -> tuple[float, float]:
    """(threshold, objective at it): F1, or cost per row."""
    y, s = np.asarray(y_true, dtype=bool), np.asarray(score, dtype=float)
    if y.size == 0 or y.shape != s.shape:
        raise CrispflowError(f"threshold: need equal, non-empty label and score arrays, got {y.shape}, {s.shape}")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise CrispflowError("threshold: scores must be finite probabilities in [0, 1]")
    if spec.objective == "f1" and not y.any():
        raise CrispflowError("threshold: the f1 objective needs at least one positive label")
    distinct, objective = _threshold_curve(y, s, spec)
    best = int(np.argmax(objective) if spec.objective == "f1" else np.argmin(objective))  # first = highest cut
    upper = distinct[best - 1] if best > 0 else 1.0  # lowest flagged score (or above every score)
    lower = distinct[best] if best < len(distinct) else 0.0  # highest unflagged score (or below every score)
    threshold = float(np.clip((upper + lower) / 2, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0)))
    value = float(objective[best]) if spec.objective == "f1" else float(objective[best]) / y.size
    return threshold, value


def choose_threshold(y_true: np.ndarray, score: np.ndarray, threshold_spec: Threshold) -> float:
    """The decision threshold in (0, 1) that maximises F1 or minimises `cost_fp * FP + cost_fn * FN` over all
    distinct scores (positive iff score >= threshold). The midpoint between the last flagged and the first
    unflagged score is returned; ties in the objective go to the highest threshold (fewest rows flagged)."""
    return _best_threshold(y_true, score, threshold_spec)[0]
