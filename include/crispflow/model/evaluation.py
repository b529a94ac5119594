"""Honest evaluation on a frozen holdout: metrics with bootstrap CIs, per-slice metrics, latency and curves.

Pure numpy/pandas/sklearn/matplotlib: this module never imports Airflow or MLflow. The statistics (ranking
kernel, stratified resampling, percentile intervals, label checks) are `crispflow.stats`'s. `metric` is the one
implementation of every metric (CV scoring, evaluation, the bootstraps' point values, blessing). Per task
(`crispflow.model.tasks` conventions):

- **binary**: `y_true` is boolean (True = the positive class), the output the model's probability of the
  positive class, and a row is predicted positive when `score >= threshold`.
- **multiclass**: `y_true` int codes 0..k-1, the output an (n, k) probability matrix; the predicted class is the
  most probable one. macro_f1 averages the classes present in the labels or the predictions (sklearn's default);
  ovr_roc_auc is the macro average of the one-vs-rest ROC AUCs (NaN if a class has no row or every row).
- **regression**: `y_true` and the output are floats; residual = observed - predicted.

- A metric that is undefined on the data is NaN, never an exception: precision with no predicted positive,
  recall and average precision with no positive, f1 when there is neither a positive nor a predicted positive,
  roc_auc with one class only, r2 on a constant target, and every score-based metric when an output is not
  finite (multiclass and regression: every metric).
- The bootstrap is **stratified** for classification: each resample draws each class separately, with
  replacement, keeping the holdout's class counts. Every binary resample then has both classes (roc_auc is always
  defined) and the intervals describe the model on a holdout of this size and prevalence. Regression resamples
  rows plainly. Intervals are percentile intervals of the resamples where the metric is defined.
- Resamples are multiplicity counts (a `B x n` matrix) and every metric is computed for all of them at once:
  confusion counts, Brier, log loss, squared and absolute errors by one matrix product (`counts @ per-row
  values`), roc_auc (Mann-Whitney, ties count 1/2) and average precision (sklearn's step-wise definition) by
  segment sums over the rows sorted once by score. The counts are drawn in blocks of ~1M cells, so memory stays
  flat whatever the number of resamples.
- Results are JSON-serialisable: Python floats and ints; NaN appears only for undefined metrics as above.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from crispflow.model.tasks import per_row_loss
from crispflow.spec import LOWER_IS_BETTER, TASK_METRICS
from crispflow.stats import (
    as_inputs,
    as_labels,
    class_resample_counts,
    percentile_interval,
    plain_resample_counts,
    ranking_metrics,
    ratio,
    resample_counts,
)

TASKS = tuple(TASK_METRICS)
# The binary evaluation's metrics (unchanged; binary log_loss is computed on demand, e.g. when a gate uses it).
METRICS = ("precision", "recall", "f1", "roc_auc", "average_precision", "brier")
HIGHER_IS_BETTER = {
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "average_precision": True,
    "brier": False,
}
THRESHOLD_METRICS = frozenset({"precision", "recall", "f1"})
BINARY_METRICS = TASK_METRICS["binary"]
# What `evaluate` reports per task (binary: METRICS, as before).
REPORTED_METRICS = {"binary": METRICS, **{t: TASK_METRICS[t] for t in ("multiclass", "regression")}}
MISSING = "<missing>"


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better (brier, log_loss, rmse and mae are lower-is-better)."""
    return metric not in LOWER_IS_BETTER


def check_task(task: str) -> str:
    if task not in TASK_METRICS:
        raise ValueError(f"task: {task!r} is not one of {list(TASK_METRICS)}")
    return task


def check_metric(name: str, task: str) -> None:
    """ValueError unless `name` is a metric of `task` (crispflow.spec.TASK_METRICS)."""
    if name not in TASK_METRICS[check_task(task)]:
        raise ValueError(f"unknown {task} metric {name!r}; known: {list(TASK_METRICS[task])}")


def _check_metrics(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in BINARY_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(BINARY_METRICS)}")


# --------------------------------------------------------------------------------------------------- kernel


def _per_row(counts: np.ndarray, y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts, squared-error sum and total weight of each resample, by one matrix product."""
    columns = np.stack([~y & ~pred, ~y & pred, y & ~pred, y & pred, (score - y) ** 2, np.ones_like(y)], axis=1)
    tn, fp, fn, tp, sq, total = (counts @ columns.astype(float)).T
    return {"tn": tn, "fp": fp, "fn": fn, "tp": tp, "sq": sq, "total": total}


def _threshold_metric(name: str, c: dict[str, np.ndarray]) -> np.ndarray:
    if name == "precision":
        return ratio(c["tp"], c["tp"] + c["fp"])
    if name == "recall":
        return ratio(c["tp"], c["tp"] + c["fn"])
    return ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def weighted_metrics(
    counts: np.ndarray, y: np.ndarray, score: np.ndarray, pred: np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Every metric in `names` for each row of `counts` (a B x n matrix of row multiplicities or weights).

    Fastest when the rows are already sorted by descending score (no reordering of `counts` is needed).
    """
    _check_metrics(names)
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    finite = bool(np.isfinite(score).all())
    nan = np.full(counts.shape[0], np.nan)
    out: dict[str, np.ndarray] = {}
    if THRESHOLD_METRICS.intersection(names) or "brier" in names:
        c = _per_row(counts, y, np.where(np.isfinite(score), score, 0.0), pred)
        out.update({n: _threshold_metric(n, c) for n in names if n in THRESHOLD_METRICS})
        out["brier"] = ratio(c["sq"], c["total"]) if finite else nan
    if {"roc_auc", "average_precision"}.intersection(names):
        auc, ap = ranking_metrics(counts, y, score) if finite else (nan, nan)
        out.update({k: v for k, v in (("roc_auc", auc), ("average_precision", ap)) if k in names})
    if "log_loss" in names:
        loss = per_row_loss("binary", y, np.where(np.isfinite(score), score, 0.5))
        out["log_loss"] = ratio(counts @ loss, counts.sum(axis=1)) if finite else nan
    return {n: out[n] for n in names}


def compute_metric(name: str, y_true: np.ndarray, score: np.ndarray, y_pred: np.ndarray) -> float:
    """One metric on the whole sample; NaN when undefined (see the module docstring)."""
    y, s = as_inputs(y_true, score)
    pred = as_labels(y_pred, "y_pred")
    if pred.shape != y.shape:
        raise ValueError(f"y_true has {y.size} rows but y_pred has {pred.size}")
    return float(weighted_metrics(np.ones((1, y.size)), y, s, pred, [name])[name][0])


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, int]:
    """{"tn", "fp", "fn", "tp"} as ints."""
    y, pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return {
        "tn": int(np.sum(~y & ~pred)),
        "fp": int(np.sum(~y & pred)),
        "fn": int(np.sum(y & ~pred)),
        "tp": int(np.sum(y & pred)),
    }


# ------------------------------------------------------------------------------------------ task kernels


def _multiclass_counts(counts: np.ndarray, y: np.ndarray, proba: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample: true positives, predicted and actual weight per class (B x k), log-loss sum and total."""
    k = proba.shape[1]
    pred = np.argmax(proba, axis=1)
    actual, predicted = np.eye(k)[y], np.eye(k)[pred]
    loss = per_row_loss("multiclass", y, proba)
    columns = np.column_stack([actual * predicted, predicted, actual, loss, np.ones(y.size)])
    sums = counts @ columns
    return {"tp": sums[:, :k], "predicted": sums[:, k : 2 * k], "actual": sums[:, 2 * k : 3 * k],
            "loss": sums[:, 3 * k], "total": sums[:, 3 * k + 1]}


def _macro(values: np.ndarray) -> np.ndarray:
    """Row means over the defined (finite) entries; NaN where none is."""
    defined = np.isfinite(values)
    return ratio(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1).astype(float))


def _ovr_auc(counts: np.ndarray, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    aucs = np.column_stack([ranking_metrics(counts, y == c, proba[:, c])[0] for c in range(proba.shape[1])])
    return np.where(np.isfinite(aucs).all(axis=1), aucs.mean(axis=1), np.nan)


def multiclass_weighted(counts: np.ndarray, y: np.ndarray, proba: np.ndarray, names: Sequence[str],
                        per_class: bool = False) -> dict[str, np.ndarray]:
    """Multiclass metrics for each row of `counts` (B x n multiplicities); with `per_class`, also the B x k
    arrays "class_precision" and "class_recall". NaN everywhere when an output is not finite."""
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    if not np.isfinite(proba).all():
        nan = np.full(counts.shape[0], np.nan)
        out = {n: nan for n in names}
        if per_class:
            out.update(class_precision=np.full((counts.shape[0], proba.shape[1]), np.nan))
            out["class_recall"] = out["class_precision"]
        return out
    c = _multiclass_counts(counts, y, proba)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "log_loss":
            out[name] = ratio(c["loss"], c["total"])
        elif name in ("accuracy", "micro_f1"):  # single-label: micro F1 = accuracy
            out[name] = ratio(c["tp"].sum(axis=1), c["total"])
        elif name == "macro_f1":
            out[name] = _macro(ratio(2 * c["tp"], c["predicted"] + c["actual"]))
        elif name == "ovr_roc_auc":
            out[name] = _ovr_auc(counts, y, proba)
        else:
            check_metric(name, "multiclass")
    if per_class:
        out["class_precision"] = ratio(c["tp"], c["predicted"])
        out["class_recall"] = ratio(c["tp"], c["actual"])
    return out


def regression_weighted(counts: np.ndarray, y: np.ndarray, pred: np.ndarray, names: Sequence[str]
                        ) -> dict[str, np.ndarray]:
    """rmse, mae and r2 for each row of `counts` (B x n multiplicities), by one matrix product; NaN everywhere
    when a prediction is not finite, r2 NaN on a constant target."""
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    for name in names:
        check_metric(name, "regression")
    if not np.isfinite(pred).all():
        return {n: np.full(counts.shape[0], np.nan) for n in names}
    err = pred - y
    centred = y - y.mean()  # centring keeps the total sum of squares exact on large targets
    sq, ab, cy, cy2, total = (counts @ np.column_stack([err**2, np.abs(err), centred, centred**2, np.ones(y.size)])).T
    mse = ratio(sq, total)
    sst = cy2 - ratio(cy**2, total)
    sst = np.where(sst > 1e-12 * np.maximum(cy2, 1e-300), sst, 0.0)  # rounding noise of a constant target
    out = {"rmse": np.sqrt(mse), "mae": ratio(ab, total), "r2": 1.0 - ratio(sq, sst)}
    return {n: out[n] for n in names}


def _binary_weighted(counts: np.ndarray, y: np.ndarray, score: np.ndarray, names: Sequence[str],
                     threshold: float | None) -> dict[str, np.ndarray]:
    """Binary metrics with an optional threshold: without one, the threshold metrics are NaN."""
    usable = threshold is not None and np.isfinite(threshold)
    pred = score >= threshold if usable else np.zeros_like(y)
    out = weighted_metrics(counts, y, score, pred, names)
    if not usable:
        out.update({n: np.full(np.atleast_2d(counts).shape[0], np.nan) for n in names if n in THRESHOLD_METRICS})
    return out


def task_weighted(task: str, counts: np.ndarray, y: np.ndarray, output: np.ndarray, names: Sequence[str],
                  threshold: float | None = None) -> dict[str, np.ndarray]:
    """Each metric in `names` of the task for each row of `counts`, on inputs prepared by `task_inputs`."""
    if task == "binary":
        return _binary_weighted(counts, y, output, names, threshold)
    if task == "multiclass":
        return multiclass_weighted(counts, y, output, names)
    return regression_weighted(counts, y, output, names)


def task_inputs(task: str, y_true: Any, output: Any) -> tuple[np.ndarray, np.ndarray]:
    """(labels, output) as the task's arrays: binary bool / float; multiclass int codes / (n, k) float;
    regression float / float. ValueError on a bad label, a code outside 0..k-1 or a length mismatch."""
    if check_task(task) == "binary":
        return as_inputs(y_true, output)
    if task == "regression":
        y = np.asarray(y_true, dtype=float).ravel()
        out = np.asarray(output, dtype=float).ravel()
    else:
        out = np.asarray(output, dtype=float)
        if out.ndim != 2 or out.shape[1] < 2:
            raise ValueError(f"multiclass output must be an (n, k) probability matrix, got shape {out.shape}")
        raw = np.asarray(y_true).ravel()
        if raw.dtype.kind not in "iu" and not (raw.dtype.kind == "f" and np.all(raw == np.round(raw))):
            raise ValueError(f"y_true must be integer class codes for a multiclass task, got dtype {raw.dtype}")
        y = raw.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= out.shape[1]):
            raise ValueError(f"y_true has class codes outside 0..{out.shape[1] - 1}")
    if y.shape[0] != out.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} rows but the output has {out.shape[0]}")
    return y, out


def metric(name: str, task: str, y: Any, output: Any, threshold: float | None = None) -> float:
    """One metric of the task on the whole sample (see the module docstring); NaN when undefined.

    binary: `output` = P(positive), `threshold` needed by precision/recall/f1 (NaN without one);
    multiclass: (n, k) probabilities and int codes; regression: predictions and observed values."""
    check_metric(name, task)
    y, out = task_inputs(task, y, output)
    return float(task_weighted(task, np.ones((1, y.shape[0])), y, out, [name], threshold)[name][0])


def task_resample_counts(task: str, y: np.ndarray, n_boot: int, seed: int | Sequence[int]) -> Any:
    """The task's bootstrap: stratified by class for binary and multiclass, plain rows for regression."""
    if task == "binary":
        return resample_counts(y, n_boot, seed)
    if task == "multiclass":
        return class_resample_counts(y, n_boot, seed)
    return plain_resample_counts(y.shape[0], n_boot, seed)


def confusion_matrix_k(y: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    """The k x k confusion matrix (rows: actual class, columns: predicted class) as nested int lists."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(int).tolist()


def residual_summary(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Residuals (observed - predicted): mean (bias), std, quantiles, mean and max absolute value; NaN if a
    prediction is not finite or there is no row."""
    keys = ("mean", "std", "q05", "q25", "median", "q75", "q95", "mean_abs", "max_abs")
    r = np.asarray(y, dtype=float) - np.asarray(pred, dtype=float)
    if not r.size or not np.isfinite(r).all():
        return dict.fromkeys(keys, float("nan"))
    q = np.quantile(r, [0.05, 0.25, 0.5, 0.75, 0.95])
    values = (r.mean(), r.std(), *q, np.abs(r).mean(), np.abs(r).max())
    return {k: float(v) for k, v in zip(keys, values, strict=True)}


def interval_report(y: Any, pred: Any, interval: Mapping[str, Any]) -> dict[str, Any]:
    """A regression version's interval record (the `crispflow.interval` tag: coverage, halfwidth, method) with its
    holdout check: "holdout_coverage", the share of rows whose observed value lies in [pred - halfwidth,
    pred + halfwidth] (NaN without a finite halfwidth or a row), and "holdout_rows". The card reads it from
    `evaluation["interval"]`."""
    y, out = task_inputs("regression", y, pred)
    try:
        halfwidth = float(interval.get("halfwidth"))
    except (TypeError, ValueError):
        halfwidth = float("nan")
    inside = np.abs(y - out) <= halfwidth
    covered = float(inside.mean()) if y.size and np.isfinite(halfwidth) else float("nan")
    return {**interval, "holdout_coverage": covered, "holdout_rows": int(y.size)}


# ------------------------------------------------------------------------------------------------ bootstrap


def bootstrap_metrics(
    y: np.ndarray, score: np.ndarray, pred: np.ndarray, names: Sequence[str], n_boot: int, seed: int | Sequence[int]
) -> dict[str, np.ndarray]:
    """Each metric on `n_boot` stratified resamples: name -> array of length n_boot (NaN where undefined)."""
    order = np.argsort(-score, kind="stable")  # resample in score order: the kernel then needs no reordering
    y, score, pred = y[order], score[order], pred[order]
    parts = [weighted_metrics(c, y, score, pred, names) for c in resample_counts(y, n_boot, seed)]
    return {n: np.concatenate([p[n] for p in parts]) if parts else np.full(n_boot, np.nan) for n in names}


def bootstrap_ci(
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float,
    names: Sequence[str] = METRICS,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | Sequence[int] = 0,
) -> dict[str, dict[str, float]]:
    """Point value and stratified percentile-bootstrap (1 - alpha) CI of each metric.

    Returns name -> {"value", "ci_low", "ci_high"}; the value is the metric on the whole sample.
    """
    y, s = as_inputs(y_true, score)
    pred = s >= threshold
    point = weighted_metrics(np.ones((1, y.size)), y, s, pred, names)
    boots = bootstrap_metrics(y, s, pred, names, n_boot, seed)
    out = {}
    for name in names:
        low, high = percentile_interval(boots[name], alpha)
        out[name] = {"value": float(point[name][0]), "ci_low": low, "ci_high": high}
    return out


# --------------------------------------------------------------------------------------------------- slices


def slice_groups(values: Any, n: int) -> dict[str, np.ndarray]:
    """Row indices of each distinct value (as a string; missing values as "<missing>"), sorted by key."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(values, dtype=object)), use_na_sentinel=True)
    if codes.size != n:
        raise ValueError(f"slice has {codes.size} values for {n} rows")
    groups = {str(u): np.flatnonzero(codes == i) for i, u in enumerate(uniques)}
    if np.any(codes < 0):
        groups[MISSING] = np.flatnonzero(codes < 0)
    return dict(sorted(groups.items()))


def too_small(task: str, y: np.ndarray, min_rows: int) -> str | None:
    """Why a group of rows (labels `y` in the task's convention) is too small to judge, or None: fewer than
    `min_rows` rows, or, binary, fewer than 2 rows of a class (TPR, FPR and ROC AUC are then undefined or
    degenerate). The blessing gate's slice check and the fairness report's groups both use it."""
    if y.shape[0] < min_rows:
        return f"fewer than {min_rows} rows"
    if task == "binary" and (y.sum() < 2 or y.size - y.sum() < 2):
        return "fewer than 2 rows of a class"
    return None


def _slice_report(
    y: np.ndarray, s: np.ndarray, threshold: float, rows: np.ndarray, min_rows: int, boot: dict[str, Any]
) -> dict[str, Any]:
    report: dict[str, Any] = {"n": int(rows.size), "positives": int(y[rows].sum())}
    if rows.size < min_rows:
        report["skipped"] = f"fewer than {min_rows} rows"
    else:
        report["metrics"] = bootstrap_ci(y[rows], s[rows], threshold, **boot)
    return report


def _evaluate_binary(
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float,
    *,
    slices: Mapping[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_slice_rows: int = 50,
) -> dict[str, Any]:
    """All metrics with stratified bootstrap CIs, the confusion matrix and per-slice metrics, as a JSON dict."""
    y, s = as_inputs(y_true, score)
    out: dict[str, Any] = {
        "task": "binary",
        "n": int(y.size),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "alpha": float(alpha),
        "bootstrap": {"samples": int(n_boot), "method": "stratified percentile", "seed": int(seed)},
        "metrics": bootstrap_ci(y, s, threshold, METRICS, n_boot, alpha, seed),
        "confusion_matrix": confusion_matrix(y, s >= threshold),
        "slices": {},
    }
    for k, (column, values) in enumerate((slices or {}).items()):
        groups = slice_groups(values, y.size)
        out["slices"][column] = {
            value: _slice_report(
                y,
                s,
                threshold,
                rows,
                min_slice_rows,
                {"names": METRICS, "n_boot": n_boot, "alpha": alpha, "seed": [seed, k, j]},
            )
            for j, (value, rows) in enumerate(groups.items())
        }
    return out


def _interval(values: np.ndarray, point: float, alpha: float) -> dict[str, float]:
    low, high = percentile_interval(values, alpha)
    return {"value": float(point), "ci_low": low, "ci_high": high}


def _boot_multiclass(y: np.ndarray, proba: np.ndarray, n_boot: int, alpha: float, seed: Any) -> dict[str, Any]:
    """Metrics and per-class precision/recall with stratified percentile CIs."""
    names = REPORTED_METRICS["multiclass"]
    point = multiclass_weighted(np.ones((1, y.size)), y, proba, names, per_class=True)
    parts = [multiclass_weighted(c, y, proba, names, per_class=True) for c in class_resample_counts(y, n_boot, seed)]
    k = proba.shape[1]

    def stacked(key: str, width: int | None = None) -> np.ndarray:
        if parts:
            return np.concatenate([p[key] for p in parts])
        return np.full((n_boot, width) if width else n_boot, np.nan)

    metrics = {n: _interval(stacked(n), point[n][0], alpha) for n in names}
    per_class = {
        kind: [_interval(stacked(f"class_{kind}", k)[:, j], point[f"class_{kind}"][0, j], alpha) for j in range(k)]
        for kind in ("precision", "recall")
    }
    return {"metrics": metrics, "per_class": per_class}


def _boot_regression(y: np.ndarray, pred: np.ndarray, n_boot: int, alpha: float, seed: Any) -> dict[str, Any]:
    names = REPORTED_METRICS["regression"]
    point = regression_weighted(np.ones((1, y.size)), y, pred, names)
    parts = [regression_weighted(c, y, pred, names) for c in plain_resample_counts(y.size, n_boot, seed)]
    boots = {n: np.concatenate([p[n] for p in parts]) if parts else np.full(n_boot, np.nan) for n in names}
    return {"metrics": {n: _interval(boots[n], point[n][0], alpha) for n in names}}


def _class_counts(y: np.ndarray, labels: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(labels))
    return {label: int(c) for label, c in zip(labels, counts, strict=True)}


def _multiclass_slice(y: np.ndarray, proba: np.ndarray, labels: Sequence[str], min_rows: int,
                      boot: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"n": int(y.size), "class_counts": _class_counts(y, labels)}
    if y.size < min_rows:
        return {**report, "skipped": f"fewer than {min_rows} rows"}
    return {**report, "metrics": _boot_multiclass(y, proba, **boot)["metrics"]}


def _regression_slice(y: np.ndarray, pred: np.ndarray, min_rows: int, boot: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"n": int(y.size)}
    if y.size < min_rows:
        return {**report, "skipped": f"fewer than {min_rows} rows"}
    return {**report, "metrics": _boot_regression(y, pred, **boot)["metrics"], "residuals": residual_summary(y, pred)}


def _class_names(class_labels: Sequence[Any], k: int) -> list[str]:
    if class_labels and len(class_labels) != k:
        raise ValueError(f"class_labels has {len(class_labels)} classes but the output has {k} columns")
    return [str(c) for c in class_labels] if class_labels else [str(j) for j in range(k)]


def evaluate(
    y_true: np.ndarray,
    output: np.ndarray,
    threshold: float | None = None,
    *,
    task: str = "binary",
    class_labels: Sequence[Any] = (),
    slices: Mapping[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_slice_rows: int = 50,
) -> dict[str, Any]:
    """The task's metrics with bootstrap CIs, its extras and per-slice metrics, as a JSON dict.

    Every report has "task", "n", "alpha", "bootstrap", "metrics" ({name: {value, ci_low, ci_high}} for
    `REPORTED_METRICS[task]`) and "slices" ({column: {value: report}}; a slice value with fewer than
    `min_slice_rows` rows has "skipped" instead of "metrics"). Extras:

    - binary: "positives", "threshold" and "confusion_matrix" {tn, fp, fn, tp} (`threshold` is required);
    - multiclass: "classes" (labels as strings, model order), "class_counts", "per_class" {label: {support,
      precision, recall}} with CIs, "confusion_matrix" {"labels", "matrix"} (rows actual, columns predicted);
      slices add "class_counts";
    - regression: "residuals" (observed - predicted: mean, std, quantiles, mean/max absolute) and "observed"
      {mean, std}; slices add their own "residuals".
    """
    if check_task(task) == "binary":
        if threshold is None:
            raise ValueError("evaluate: a binary evaluation needs the decision threshold")
        return _evaluate_binary(y_true, output, threshold, slices=slices, n_boot=n_boot, alpha=alpha, seed=seed,
                                min_slice_rows=min_slice_rows)
    y, out = task_inputs(task, y_true, output)
    method = "stratified percentile" if task == "multiclass" else "percentile"
    report: dict[str, Any] = {
        "task": task,
        "n": int(y.shape[0]),
        "alpha": float(alpha),
        "bootstrap": {"samples": int(n_boot), "method": method, "seed": int(seed)},
    }
    boot = {"n_boot": n_boot, "alpha": alpha}
    if task == "multiclass":
        labels = _class_names(class_labels, out.shape[1])
        main = _boot_multiclass(y, out, seed=seed, **boot)
        support = _class_counts(y, labels)
        report.update(
            classes=labels,
            class_counts=support,
            metrics=main["metrics"],
            per_class={label: {"support": support[label], "precision": main["per_class"]["precision"][j],
                               "recall": main["per_class"]["recall"][j]} for j, label in enumerate(labels)},
            confusion_matrix={"labels": labels, "matrix": confusion_matrix_k(y, np.argmax(out, axis=1), len(labels))},
        )
    else:
        report["metrics"] = _boot_regression(y, out, seed=seed, **boot)["metrics"]
        report["residuals"] = residual_summary(y, out)
        report["observed"] = {"mean": float(np.mean(y)) if y.size else float("nan"),
                              "std": float(np.std(y)) if y.size else float("nan")}
    report["slices"] = {}
    for k, (column, values) in enumerate((slices or {}).items()):
        groups = slice_groups(values, y.shape[0])
        report["slices"][column] = {
            value: (
                _multiclass_slice(y[rows], out[rows], report["classes"], min_slice_rows, {**boot, "seed": [seed, k, j]})
                if task == "multiclass"
                else _regression_slice(y[rows], out[rows], min_slice_rows, {**boot, "seed": [seed, k, j]})
            )
            for j, (value, rows) in enumerate(groups.items())
        }
    return report


# -------------------------------------------------------------------------------------------------- latency


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def measure_latency(
    predict: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame, *, single_rows: int = 200, repeats: int = 3
) -> dict[str, Any]:
    """Batch latency (ms per row, median of `repeats` full-frame calls) and single-row p50/p95 (ms).

    One warm-up call comes first. Single rows are evenly spaced over the frame, built as one-row frames before
    timing (a serving request arrives already parsed), and each is scored `repeats` times; percentiles pool
    all those timings. `latency_p95_ms` is the single-row p95, the key `blessing.decide` compares.
    """
    if frame.empty:
        raise ValueError("measure_latency needs at least one row")
    predict(frame.iloc[:1])
    batch = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        predict(frame)
        batch.append(_ms_since(start))
    picks = np.unique(np.linspace(0, len(frame) - 1, num=min(single_rows, len(frame))).round().astype(int))
    rows = [frame.iloc[[i]] for i in picks]
    single = []
    for _ in range(max(1, repeats)):
        for row in rows:
            start = time.perf_counter()
            predict(row)
            single.append(_ms_since(start))
    p50, p95 = np.percentile(single, [50, 95])
    return {
        "batch_rows": len(frame),
        "batch_ms": float(np.median(batch)),
        "batch_ms_per_row": float(np.median(batch)) / len(frame),
        "single_rows": len(rows),
        "repeats": max(1, repeats),
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
        "latency_max_ms": float(np.max(single)),
    }


def paired_latency(
    predicts: Mapping[str, Callable[[pd.DataFrame], Any]], frame: pd.DataFrame, *, single_rows: int = 100,
    rounds: int = 5
) -> dict[str, float]:
    """Single-row p95 latency (ms) of several models, measured side by side so the machine's load hits them alike.

    Every row is scored by each model back to back, the order alternating from row to row; each round gives one
    p95 per model and the median round is kept. A load spike then lands on the rows of every model instead of on
    whichever was being timed (two models of the same kind read within a few percent of each other on a busy
    machine, where timing them one after the other can read 2x apart)."""
    if frame.empty:
        raise ValueError("paired_latency needs at least one row")
    names = list(predicts)
    for name in names:  # warm-up
        predicts[name](frame.iloc[:1])
    picks = np.unique(np.linspace(0, len(frame) - 1, num=min(single_rows, len(frame))).round().astype(int))
    rows = [frame.iloc[[i]] for i in picks]
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, rounds)):
        times: dict[str, list[float]] = {name: [] for name in names}
        for i, row in enumerate(rows):
            for name in names if (i + r) % 2 == 0 else reversed(names):
                start = time.perf_counter()
                predicts[name](row)
                times[name].append(_ms_since(start))
        for name in names:
            per_round[name].append(float(np.percentile(times[name], 95)))
    return {name: float(np.median(values)) for name, values in per_round.items()}


# ------------------------------------------------------------------------------------------------- plotting


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _reliability(y: np.ndarray, s: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean score, observed positive rate and count per quantile bin of the score."""
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(edges.size - 2, 0))
    count = np.bincount(which, minlength=max(edges.size - 1, 1)).astype(float)
    mean_score = ratio(np.bincount(which, weights=s, minlength=count.size), count)
    rate = ratio(np.bincount(which, weights=y.astype(float), minlength=count.size), count)
    return mean_score, rate, count


def _legend(ax: Any, loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc)


def _undefined(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)


def _plot_roc(ax: Any, y: np.ndarray, s: np.ndarray, pred: np.ndarray) -> None:
    from sklearn.metrics import roc_curve

    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    if y.all() or not y.any():
        _undefined(ax, "ROC undefined: one class only")
    else:
        fpr, tpr, _ = roc_curve(y, s)
        auc = compute_metric("roc_auc", y, s, pred)
        ax.plot(fpr, tpr, label=f"ROC (AUC = {auc:.3f})")
        ax.plot(np.mean(pred[~y]), np.mean(pred[y]), "o", color="red", label="threshold")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    _legend(ax, "lower right")


def _plot_pr(ax: Any, y: np.ndarray, s: np.ndarray, pred: np.ndarray) -> None:
    from sklearn.metrics import precision_recall_curve

    if not y.any():
        _undefined(ax, "PR curve undefined: no positives")
    else:
        precision, recall, _ = precision_recall_curve(y, s)
        ap = compute_metric("average_precision", y, s, pred)
        ax.step(recall, precision, where="post", label=f"PR (AP = {ap:.3f})")
        ax.axhline(y.mean(), linestyle="--", color="grey", label=f"prevalence = {y.mean():.3f}")
        point = compute_metric("precision", y, s, pred)
        ax.plot(
            compute_metric("recall", y, s, pred),
            point if np.isfinite(point) else 1.0,
            "o",
            color="red",
            label="threshold",
        )
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(0, 1), ylim=(0, 1.02))
    _legend(ax, "upper right")


def _plot_calibration(axes: Any, y: np.ndarray, s: np.ndarray) -> None:
    top, bottom = axes
    if not s.size:
        _undefined(top, "calibration undefined: no finite score")
        return
    mean_score, rate, _ = _reliability(y, s)
    low, high = float(np.min(s)), float(np.max(s))
    top.plot([low, high], [low, high], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot(mean_score, rate, "o-", label="model (quantile bins)")
    top.set(ylabel="observed positive rate", title="Calibration (reliability diagram)")
    _legend(top, "upper left")
    bottom.hist(s[~y], bins=30, alpha=0.6, label="negatives")
    bottom.hist(s[y], bins=30, alpha=0.6, label="positives")
    bottom.set(xlabel="score", ylabel="rows", yscale="log")
    _legend(bottom, "upper right")


def _plot_confusion(ax: Any, y: np.ndarray, pred: np.ndarray, threshold: float) -> None:
    cm = confusion_matrix(y, pred)
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    ax.imshow(grid, cmap="Blues")
    for (i, j), value in np.ndenumerate(grid):
        color = "white" if value > grid.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=14)
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["predicted -", "predicted +"],
        yticklabels=["actual -", "actual +"],
        title=f"Confusion matrix (threshold {threshold:.3g})",
    )


def _binary_plots(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, bytes]:
    """PNG bytes of the ROC, PR, calibration and confusion-matrix plots."""
    y, s = as_inputs(y_true, score)
    pred = s >= threshold
    finite = np.isfinite(s)
    y_f, s_f, pred_f = y[finite], s[finite], pred[finite]
    return _render(
        (
            ("roc.png", lambda f: _plot_roc(f.subplots(), y_f, s_f, pred_f), 5),
            ("pr.png", lambda f: _plot_pr(f.subplots(), y_f, s_f, pred_f), 5),
            ("calibration.png", lambda f: _plot_calibration(f.subplots(2, 1, sharex=True), y_f, s_f), 8),
            ("confusion_matrix.png", lambda f: _plot_confusion(f.subplots(), y, pred, threshold), 5),
        )
    )


def _render(plots: Sequence[tuple[str, Callable[[Any], None], float]]) -> dict[str, bytes]:
    """Each (file name, draw(figure), height) as PNG bytes.

    Figures are built with the object-oriented API on the Agg canvas (no pyplot, no global backend switch, no
    figure registry), so nothing is left open and it is safe in worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = {}
    for name, draw, height in plots:
        fig = Figure(figsize=(6, height), layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        out[name] = _png(fig)
        fig.clear()
    return out


def _plot_observed(ax: Any, y: np.ndarray, pred: np.ndarray) -> None:
    if not y.size:
        _undefined(ax, "no finite prediction")
    else:
        low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([low, high], [low, high], linestyle="--", color="grey", label="perfect")
        ax.scatter(pred, y, s=4, alpha=0.3, label="holdout rows")
        _legend(ax, "upper left")
    ax.set(xlabel="predicted", ylabel="observed", title="Predicted vs observed")


def _plot_residuals(axes: Any, y: np.ndarray, pred: np.ndarray) -> None:
    top, bottom = axes
    if not y.size:
        _undefined(top, "no finite prediction")
        return
    residual = y - pred
    top.axhline(0.0, linestyle="--", color="grey")
    top.scatter(pred, residual, s=4, alpha=0.3)
    top.set(xlabel="predicted", ylabel="residual (observed - predicted)", title="Residuals")
    bottom.hist(residual, bins=40)
    bottom.set(xlabel="residual (observed - predicted)", ylabel="rows")


def _plot_confusion_k(ax: Any, y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> None:
    grid = np.array(confusion_matrix_k(y, pred, len(labels)))
    ax.imshow(grid, cmap="Blues")
    if len(labels) <= 12:  # beyond that the numbers are unreadable: colours only
        for (i, j), value in np.ndenumerate(grid):
            color = "white" if value > grid.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=10)
    ticks = list(range(len(labels)))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title="Confusion matrix")
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)


def plot_curves(
    y_true: np.ndarray,
    output: np.ndarray,
    threshold: float | None = None,
    *,
    task: str = "binary",
    class_labels: Sequence[Any] = (),
) -> dict[str, bytes]:
    """PNG bytes of the task's plots: binary ROC, PR, calibration and confusion matrix (`threshold` required);
    multiclass the confusion matrix; regression predicted vs observed and residuals."""
    if check_task(task) == "binary":
        if threshold is None:
            raise ValueError("plot_curves: a binary task needs the decision threshold")
        return _binary_plots(y_true, output, threshold)
    y, out = task_inputs(task, y_true, output)
    if task == "multiclass":
        labels = _class_names(class_labels, out.shape[1])
        finite = np.isfinite(out).all(axis=1)
        pred = np.argmax(out[finite], axis=1)
        return _render(
            (("confusion_matrix.png", lambda f: _plot_confusion_k(f.subplots(), y[finite], pred, labels), 6),)
        )
    finite = np.isfinite(out)
    y_f, p_f = y[finite], out[finite]
    return _render(
        (
            ("predicted_vs_observed.png", lambda f: _plot_observed(f.subplots(), y_f, p_f), 6),
            ("residuals.png", lambda f: _plot_residuals(f.subplots(2, 1), y_f, p_f), 8),
        )
    )
