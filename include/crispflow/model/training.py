"""Model selection and fitting: search plan, cross-validation, calibration, decision threshold and prediction
intervals (the holdout is in crispflow.model.holdout).

Pure pandas / numpy / scikit-learn, never Airflow or MLflow. Deterministic given `split.seed`: the search plan,
the CV folds, the calibration folds and the estimators' random state all derive from it. pandas and
scikit-learn are imported inside the functions that use them, so importing this module at DAG parse time is cheap.

Every phase follows the spec's task (`spec.task`, see crispflow.model.tasks for labels and outputs):

| task | estimator | CV folds | final model | decision / interval |
|---|---|---|---|---|
| binary | classifier | StratifiedKFold | calibrated (`training.calibration`) | threshold on OOF probabilities |
| multiclass | classifier | StratifiedKFold | calibrated (`training.calibration`) | none (most probable class) |
| regression | regressor | KFold | as fitted | split-conformal halfwidth from OOF residuals |

What travels between tasks (search plan, CV results) is plain JSON-serialisable data: configs are
`{"config_id", "candidate", "params"}`; CV results add `metric`, `folds`, `mean`, `std`, `fit_seconds`. A fold
metric that is undefined (a validation fold with one class, non-finite probabilities) is NaN, which Python's json
writes as the (non-standard) token `NaN`. Metrics are `crispflow.model.evaluation.metric`'s, the one
implementation evaluation and blessing use too.

The binary decision rule everywhere is: positive iff calibrated probability >= threshold.

Fits run with native thread pools (BLAS, OpenMP) limited to `CRISPFLOW_TRAIN_THREADS` (default 1; see
crispflow.native_threads): the search parallelises across mapped tasks instead.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crispflow.errors import CrispflowError, SpecError
from crispflow.native_threads import thread_limit
from crispflow.spec import LOWER_IS_BETTER

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import BaseCrossValidator
    from sklearn.pipeline import Pipeline

    from crispflow.spec import Candidate, PipelineSpec, Threshold, Training

# Estimator parameters crispflow sets itself (when the estimator has them): a grid may not override them.
RESERVED_PARAMS = {
    "class_weight": "training.class_weight",
    "random_state": "split.seed",
    "early_stopping": "crispflow (always off, for determinism)",
}
INTERVAL_METHOD = "split_conformal_oof"
SELECTION_CUT = 0.5  # binary threshold metrics during model selection


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


def is_classification(spec: PipelineSpec) -> bool:
    return spec.task != "regression"


# --- the model --------------------------------------------------------------------------------------------


def _base_estimator(spec: PipelineSpec, candidate: Candidate) -> BaseEstimator:
    """The candidate's estimator (crispflow.estimators) with the parameters crispflow fixes: class_weight
    (classification), random_state and early_stopping=False, each only where the estimator has it."""
    from crispflow.estimators import accepts, make_estimator

    training = _training(spec)
    est = make_estimator(spec.task, candidate.estimator, allowed=training.allowed_estimators,
                         field=f"{spec.name}: training.candidates[{candidate.name}].estimator")
    fixed: dict[str, Any] = {"random_state": spec.split.seed, "early_stopping": False}
    if is_classification(spec):
        fixed["class_weight"] = training.class_weight
    return est.set_params(**{name: value for name, value in fixed.items() if accepts(est, name)})


def _estimator(spec: PipelineSpec, candidate: Candidate, params: dict[str, Any]) -> BaseEstimator:
    """The candidate's estimator with `params` set; unknown, reserved or invalid parameters are SpecErrors."""
    where = f"{spec.name}: training.candidates[{candidate.name}]"
    est = _base_estimator(spec, candidate)
    valid = est.get_params(deep=False)
    for name in params:
        if name in RESERVED_PARAMS:
            raise SpecError(f"{where}: parameter {name!r} is set by {RESERVED_PARAMS[name]}, not by the grid")
        if name not in valid:
            allowed = sorted(set(valid) - set(RESERVED_PARAMS))
            raise SpecError(f"{where}: unknown parameter {name!r} for {candidate.estimator} (known: {allowed})")
    try:
        est.set_params(**params)
        validate = getattr(est, "_validate_params", None)  # sklearn's own type/range check, now, not at fit time
        if validate is not None:
            validate()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: invalid parameters {params}: {exc}") from None
    return est


def build_model(spec: PipelineSpec, candidate: Candidate, params: dict[str, Any]) -> Pipeline:
    """An unfitted Pipeline: the spec's preprocessing (crispflow.model.features), then the candidate's
    estimator."""
    from sklearn.pipeline import Pipeline

    from crispflow.model.features import build_preprocessor

    return Pipeline([("preprocess", build_preprocessor(spec)), ("model", _estimator(spec, candidate, params))])


def _folds(spec: PipelineSpec) -> BaseCrossValidator:
    """`training.cv_folds` shuffled folds seeded by `split.seed`: stratified by class for classification."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = StratifiedKFold if is_classification(spec) else KFold
    return splitter(n_splits=_training(spec).cv_folds, shuffle=True, random_state=spec.split.seed)


def _final_estimator(spec: PipelineSpec, config: dict[str, Any]) -> Any:
    """The config's pipeline, wrapped in CalibratedClassifierCV (k folds, seeded) when the spec calibrates a
    classifier (binary or multiclass; a regressor is never wrapped).

    `ensemble=False`: the calibrator is fitted on out-of-fold scores and one pipeline is fitted on all rows
    (k + 1 fits, one pipeline in the artifact) instead of an ensemble of k calibrated pipelines."""
    model = build_model(spec, _candidate(spec, config["candidate"]), config["params"])
    method = _training(spec).calibration
    if method is None or not is_classification(spec):
        return model
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(model, method=method, cv=_folds(spec), ensemble=False)


def positive_proba(model: ClassifierMixin, X: pd.DataFrame) -> np.ndarray:
    """P(positive) from a fitted classifier trained on boolean labels (binary tasks)."""
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


def _metric(spec: PipelineSpec, name: str, y: np.ndarray, output: np.ndarray) -> float:
    """`name` scored by crispflow.model.evaluation.metric (NaN when undefined); binary f1/precision/recall cut
    the probabilities at 0.5 (the threshold is chosen after selection)."""
    from crispflow.model.evaluation import metric

    return float(metric(name, spec.task, y, output, threshold=SELECTION_CUT if spec.task == "binary" else None))


def cross_validate(spec: PipelineSpec, config: dict[str, Any], train: pd.DataFrame) -> dict[str, Any]:
    """k-fold CV (`training.cv_folds`, shuffled with `split.seed`; stratified for classification) of one config's
    pipeline, scored with `training.selection_metric` on the model output of each validation fold.
    `fit_seconds` is the total fitting time over the folds."""
    from sklearn.base import clone

    from crispflow.model.features import features
    from crispflow.model.tasks import labels, model_output

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
            output = model_output(spec, fitted, X.iloc[val_rows])
            folds.append(_metric(spec, training.selection_metric, y[val_rows], output))
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
    """The result with the best mean (highest; lowest for the metrics in spec.LOWER_IS_BETTER), ties broken by
    lower std, then config_id. Results whose mean is not finite never win; if none is finite, CrispflowError."""
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


# --- final fit: calibration, threshold, intervals ---------------------------------------------------------


@dataclass
class _Scored:
    """Probabilities computed elsewhere, posing as a fitted classifier so tasks.model_output orders them."""

    classes_: np.ndarray
    proba: np.ndarray

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.proba


def _response_method(spec: PipelineSpec, model: Any) -> str:
    """What the out-of-fold predictions are: the regressor's predictions, the classifier's probabilities, or,
    under calibration, the raw response CalibratedClassifierCV calibrates (decision_function if the model has
    one, else predict_proba)."""
    if not is_classification(spec):
        return "predict"
    if _training(spec).calibration is not None and hasattr(model, "decision_function"):
        return "decision_function"
    return "predict_proba"


def _calibrated(final: Any, raw: np.ndarray) -> np.ndarray:
    """The probabilities `final` (a CalibratedClassifierCV, ensemble=False) gives rows whose uncalibrated response
    is `raw` (crispflow.model.compiled.calibrate, the one implementation). Columns follow `final.classes_`."""
    from crispflow.model.compiled import calibrate

    return calibrate(final.calibrated_classifiers_[0], raw)


def _oof_output(spec: PipelineSpec, final: Any, X: pd.DataFrame, y: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions in the task's output convention (crispflow.model.tasks), calibrated like `final`."""
    from crispflow.model.tasks import model_output

    if not is_classification(spec):
        return np.asarray(raw, dtype="float64")
    if _training(spec).calibration is not None:
        return model_output(spec, _Scored(final.classes_, _calibrated(final, raw)), X)
    return model_output(spec, _Scored(np.unique(y), np.asarray(raw, dtype="float64")), X)


def conformal_halfwidth(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal halfwidth: the ceil((n + 1) * coverage)-th smallest absolute residual, i.e. the residuals'
    finite-sample quantile at ceil((n + 1) * coverage) / n. CrispflowError when n is too small for `coverage`."""
    r = np.abs(np.asarray(residuals, dtype="float64"))
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise CrispflowError(f"prediction interval: need finite residuals, got {r.size} (some not finite?)")
    if not 0 < coverage < 1:
        raise CrispflowError(f"prediction interval: coverage must be in (0, 1), got {coverage}")
    k = math.ceil((r.size + 1) * coverage)
    if k > r.size:
        raise CrispflowError(f"prediction interval: {r.size} residuals are too few for {coverage:.0%} coverage "
                             f"(need at least {math.ceil(coverage / (1 - coverage))})")
    return float(np.partition(r, k - 1)[k - 1])


def fit_final(
    spec: PipelineSpec, config: dict[str, Any], train: pd.DataFrame
) -> tuple[Any, float | None, dict[str, Any]]:
    """Fit the final model on all of `train`; judge it on out-of-fold predictions. Returns (model, threshold,
    info); the threshold is None unless the task is binary.

    Out-of-fold predictions come from the same seeded folds the calibrator is fitted on and pass through that
    calibrator (2k + 1 fits in all when calibrating). Per task:
    - binary: the threshold minimising cost (or maximising F1) on the OOF probabilities;
      `info["threshold_objective"]` is the OOF F1, or the OOF cost per row, at it.
    - multiclass: no threshold (the most probable class); `info["class_counts"]` per class label.
    - regression: no calibration, no threshold; `info["interval"]` is the split-conformal prediction interval
      (`{"coverage", "halfwidth", "method"}`) at `training.interval_coverage`, from OOF absolute residuals.
    """
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    from crispflow.model.features import features
    from crispflow.model.tasks import labels

    training = _training(spec)
    model = _final_estimator(spec, config)
    base = build_model(spec, _candidate(spec, config["candidate"]), config["params"])
    X, y = features(spec, train), labels(spec, train)
    method = _response_method(spec, base)
    with thread_limit("CRISPFLOW_TRAIN_THREADS"):
        raw = cross_val_predict(clone(base), X, y, cv=_folds(spec), method=method)
        final = clone(model).fit(X, y)
    oof = _oof_output(spec, final, X, y, raw)
    info: dict[str, Any] = {
        "config_id": config["config_id"],
        "task": spec.task,
        "metric": training.selection_metric,
        "oof_metric": _metric(spec, training.selection_metric, y, oof),
        "n_train": len(y),
        "oof_output": oof,  # popped by the caller: the honest reference for drift (never in-sample output)
    }
    if spec.task == "binary":
        threshold, objective = _best_threshold(y, oof, training.threshold)
        return final, threshold, {**info, "threshold_objective": objective, "positives": int(y.sum())}
    if spec.task == "multiclass":
        counts = np.bincount(y, minlength=len(spec.class_labels))
        return final, None, {**info, "class_counts": {str(c): int(n) for c, n in zip(spec.class_labels, counts,
                                                                                       strict=True)}}
    coverage = training.interval_coverage
    halfwidth = conformal_halfwidth(y - oof, coverage)
    return final, None, {**info, "interval": {"coverage": coverage, "halfwidth": halfwidth,
                                              "method": INTERVAL_METHOD}}


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
