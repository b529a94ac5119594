"""The blessing gate: may a challenger replace the champion? Statistics on a frozen holdout, not a point comparison.

Pure numpy/scipy: this module never imports Airflow or MLflow (DeLong, resampling, Holm and Benjamini-Hochberg
come from `crispflow.stats`, every metric from `crispflow.model.evaluation.metric`'s kernels). `decide` returns a
JSON verdict for the task (binary, multiclass, regression; outputs as in `crispflow.model.tasks`). With a champion
(both models scored on the same holdout rows) the checks are:

- **non_inferiority** of the primary metric: the difference challenger - champion, in the metric's units and
  sign-adjusted so that positive is better (also for the lower-is-better brier, log_loss, rmse, mae), with a
  two-sided (1 - 2 alpha) CI; passes when its lower bound (a one-sided alpha test) is above -margin. Binary
  roc_auc uses DeLong's test for correlated ROC curves (fast midrank version, Sun & Xu 2014); every other metric a
  paired bootstrap (both models on the same resamples: stratified by class for classification, plain rows for
  regression). For a mean loss (log_loss, brier, mae) that is exactly the bootstrap of the mean per-row loss
  difference; rmse is the square root of the mean squared error on each resample.
- **slice_non_regression**: in each slice value with >= min_slice_rows rows (binary: and >= 2 rows of each
  class; multiclass ovr_roc_auc: >= 2 rows of every class), a one-sided test of H0 "the challenger is not worse
  than the champion by more than the margin" (DeLong z for binary roc_auc, paired bootstrap otherwise). p-values
  are corrected across all tested slices (Holm or Benjamini-Hochberg); a slice fails when its corrected test
  rejects H0 at alpha and its estimate is below -margin: a credible regression. Noise across many small slices is
  not flagged (FWER/FDR control).
- **latency_budget** / **size_budget**: challenger / champion ratios of `latency_p95_ms` and `size_bytes`.
- **floor:<metric>** for each of `min_metrics` (value >= floor; lower-is-better metrics value <= floor), always
  checked, and the only checks in a cold start (no champion) when there are floors.
- **no_skill_floor**: a cold start with empty `min_metrics` is blessed only if the model is significantly better
  than no skill, at one-sided level alpha: binary, the lower bound of the (1 - 2 alpha) DeLong CI of ROC AUC is
  above 0.5; regression, the lower bound of the (1 - 2 alpha) bootstrap CI of R² is above 0 (better than
  predicting the holdout's own mean); multiclass, the upper bound of the (1 - 2 alpha) paired bootstrap CI of
  log loss - the no-skill log loss is below 0, the no-skill model being `baseline_output`
  (`crispflow.model.tasks.no_skill_output`: the training class frequencies). Without it the check fails.

- **fairness** (with `sensitive` columns and a champion): for each sensitive column and each of
  `fairness.metrics` (binary equalized-odds / demographic-parity / primary-metric difference between groups;
  multiclass and regression the primary metric's), a paired bootstrap of the challenger's disparity minus the
  champion's, H0 "it widens by at most `max_increase`", Holm-corrected across all (column, metric) tests; a test
  fails when its corrected p-value is below alpha and its estimate above `max_increase`
  (`crispflow.model.fairness.compare_fairness`). Groups with fewer than min_slice_rows rows are suppressed.
  `fairness.mode` `block`: a failure fails the gate; `warn` (default): the check passes with a "warning" and the
  verdict lists it in "warnings". The reports (metrics per group with CIs, disparities) are in
  verdict["fairness"], also in a cold start (report only, no check).

A NaN or missing quantity never passes: the check that needs it fails, with the reason "... is NaN/missing".
Bootstrap p-values are (1 + k) / (1 + B), so with B resamples and m tested slices Holm can reject only if
B >= m / alpha (1000 resamples: up to ~50 slices at alpha 0.05); DeLong p-values have no such floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import norm

from crispflow.model.evaluation import (
    METRICS,
    THRESHOLD_METRICS,
    check_metric,
    check_task,
    compute_metric,
    higher_is_better,
    slice_groups,
    task_inputs,
    task_resample_counts,
    task_weighted,
    too_small,
    weighted_metrics,
)
from crispflow.spec import TASK_METRICS
from crispflow.stats import (
    CORRECTIONS,
    NAN,
    bootstrap_p_value,
    delong,
    percentile_interval,
    resample_counts,
)

if TYPE_CHECKING:
    from crispflow.spec import Blessing


# ------------------------------------------------------------------------------------ paired bootstrap


def _predictions(score: np.ndarray, threshold: float | None) -> np.ndarray | None:
    if threshold is None or not np.isfinite(threshold):
        return None
    return score >= threshold


def _metric(name: str, y: np.ndarray, score: np.ndarray, threshold: float | None, task: str = "binary") -> float:
    if task != "binary":
        return float(task_weighted(task, np.ones((1, y.shape[0])), y, score, [name])[name][0])
    pred = _predictions(score, threshold)
    if pred is None:
        if name in THRESHOLD_METRICS:
            return NAN
        pred = np.zeros_like(y)
    return compute_metric(name, y, score, pred)


def _sign(metric: str) -> float:
    return 1.0 if higher_is_better(metric) else -1.0


def _paired_task(task: str, metric: str, y: np.ndarray, a: tuple, b: tuple, n_boot: int, seed: Any
                 ) -> tuple[float, np.ndarray]:
    """Multiclass / regression: both models on the same resamples (stratified by class / plain rows)."""
    sign = _sign(metric)
    estimate = sign * (_metric(metric, y, *a, task) - _metric(metric, y, *b, task))
    diffs = [
        sign * (task_weighted(task, c, y, a[0], [metric])[metric] - task_weighted(task, c, y, b[0], [metric])[metric])
        for c in task_resample_counts(task, y, n_boot, seed)
    ]
    return estimate, np.concatenate(diffs) if diffs else np.full(n_boot, np.nan)


def paired_bootstrap(
    metric: str,
    y_true: np.ndarray,
    score_a: np.ndarray,
    threshold_a: float | None,
    score_b: np.ndarray,
    threshold_b: float | None,
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
    *,
    task: str = "binary",
) -> tuple[float, np.ndarray]:
    """Sign-adjusted difference a - b (positive = a better) on the whole sample and on `n_boot` resamples.

    Each resample (stratified by class for binary and multiclass, plain rows for regression) is drawn once and
    both models are scored on it. A binary metric needing a threshold is NaN for a model without one.
    """
    check_metric(metric, task)
    y, a = task_inputs(task, y_true, score_a)
    _, b = task_inputs(task, y, score_b)
    if task != "binary":
        return _paired_task(task, metric, y, (a, threshold_a), (b, threshold_b), n_boot, seed)
    sign = _sign(metric)
    estimate = sign * (_metric(metric, y, a, threshold_a) - _metric(metric, y, b, threshold_b))
    pred_a, pred_b = _predictions(a, threshold_a), _predictions(b, threshold_b)
    if metric in THRESHOLD_METRICS and (pred_a is None or pred_b is None):
        return estimate, np.full(n_boot, np.nan)
    pred_a = np.zeros_like(y) if pred_a is None else pred_a
    pred_b = np.zeros_like(y) if pred_b is None else pred_b
    order = np.argsort(-a, kind="stable")  # model a's order: its kernel needs no reordering
    y, a, b, pred_a, pred_b = y[order], a[order], b[order], pred_a[order], pred_b[order]
    diffs = []
    for counts in resample_counts(y, n_boot, seed):
        on_a = weighted_metrics(counts, y, a, pred_a, [metric])[metric]
        diffs.append(sign * (on_a - weighted_metrics(counts, y, b, pred_b, [metric])[metric]))
    return estimate, np.concatenate(diffs) if diffs else np.full(n_boot, np.nan)


# ---------------------------------------------------------------------------------------------- comparisons


def _delong_test(est: float, se: float, margin: float, alpha: float) -> dict:
    z = float(norm.ppf(1 - alpha))
    if se > 0:
        p_inferior, p_regression = float(norm.sf((est + margin) / se)), float(norm.cdf((est + margin) / se))
    else:  # identical rankings (or NaN): the estimate is exact
        p_inferior = NAN if math.isnan(est) else float(est <= -margin)
        p_regression = NAN if math.isnan(est) else float(est >= -margin)
    return {
        "method": "delong",
        "estimate": est,
        "se": se,
        "ci_low": est - z * se,
        "ci_high": est + z * se,
        "p_inferior": p_inferior,
        "p_regression": p_regression,
    }


def _compare(policy: Blessing, y: np.ndarray, challenger: tuple, champion: tuple, alpha: float, seed: Any,
             task: str = "binary") -> dict:
    """Difference of the primary metric with its (1 - 2 alpha) CI and both one-sided p-values."""
    metric, margin = policy.primary_metric, policy.non_inferiority_margin
    if metric == "roc_auc" and task == "binary":
        d = delong(y, challenger[0], champion[0])
        return _delong_test(d["difference"], d["se"], margin, alpha)
    est, diffs = paired_bootstrap(
        metric, y, *challenger, *champion, n_boot=policy.bootstrap_samples, seed=seed, task=task
    )
    low, high = percentile_interval(diffs, 2 * alpha)
    return {
        "method": "paired_bootstrap",
        "estimate": est,
        "ci_low": low,
        "ci_high": high,
        "p_inferior": bootstrap_p_value(diffs, -margin, lower_tail=True),
        "p_regression": bootstrap_p_value(diffs, -margin, lower_tail=False),
    }


def _nan(*values: float) -> bool:
    return any(v is None or not math.isfinite(v) for v in values)


def _noninferiority(policy: Blessing, y: np.ndarray, challenger: tuple, champion: tuple, seed: int,
                    task: str = "binary") -> dict:
    metric, margin, alpha = policy.primary_metric, policy.non_inferiority_margin, policy.alpha
    result = _compare(policy, y, challenger, champion, alpha, seed, task)
    check = {
        "name": "non_inferiority",
        "metric": metric,
        "margin": margin,
        "ci_level": 1 - 2 * alpha,
        "challenger": _metric(metric, y, *challenger, task),
        "champion": _metric(metric, y, *champion, task),
        **{k: v for k, v in result.items() if not k.startswith("p_")},
        "p_value": result["p_inferior"],
        "hypothesis": "H0: challenger worse than champion by more than the margin; pass = CI lower bound > -margin",
    }
    if not higher_is_better(metric) and task != "binary":  # (binary verdicts keep their original keys)
        check["difference"] = "champion - challenger (lower is better: positive = challenger better)"
    if _nan(result["estimate"], result["ci_low"]):
        return {**check, "passed": False, "reason": f"{metric} difference (challenger - champion) is NaN/missing"}
    passed = result["ci_low"] > -margin
    check["passed"] = passed
    if not passed:
        check["reason"] = (
            f"{metric}: {_difference(metric)} = {result['estimate']:+.4f}, lower bound of the "
            f"{1 - 2 * alpha:.0%} CI {result['ci_low']:+.4f} is not above -margin {-margin:g}"
        )
    return check


def _difference(metric: str) -> str:
    """How the sign-adjusted difference reads (positive = challenger better) for `metric`."""
    return "challenger - champion" if higher_is_better(metric) else "champion - challenger"


def _rows(model: tuple, rows: np.ndarray) -> tuple:
    return model[0][rows], model[1]


def _slice_entry(
    policy: Blessing, y: np.ndarray, rows: np.ndarray, challenger: tuple, champion: tuple, seed: Any,
    task: str = "binary",
) -> dict:
    entry: dict[str, Any] = {"n": int(rows.size)}
    if task == "binary":
        entry["positives"] = int(y[rows].sum())
    skipped = too_small(task, y[rows], policy.min_slice_rows)
    if skipped is None and task == "multiclass" and policy.primary_metric == "ovr_roc_auc":
        k = challenger[0].shape[1]
        counts = np.bincount(y[rows], minlength=k)
        skipped = "fewer than 2 rows of a class" if (counts < 2).any() or (rows.size - counts < 2).any() else None
    if skipped is not None:
        return {**entry, "skipped": skipped}
    result = _compare(policy, y[rows], _rows(challenger, rows), _rows(champion, rows), policy.alpha, seed, task)
    return {
        **entry,
        "method": result["method"],
        "estimate": result["estimate"],
        "ci_low": result["ci_low"],
        "ci_high": result["ci_high"],
        "p_value": result["p_regression"],
    }


def _slice_check(
    policy: Blessing, y: np.ndarray, slices: Mapping[str, np.ndarray], challenger: tuple, champion: tuple, seed: int,
    task: str = "binary",
) -> dict:
    entries = []
    for k, (column, values) in enumerate(slices.items()):
        for j, (value, rows) in enumerate(slice_groups(values, y.shape[0]).items()):
            entry = _slice_entry(policy, y, rows, challenger, champion, [seed, 1 + k, j], task)
            entries.append({"column": column, "value": value, **entry})
    tested = [e for e in entries if "skipped" not in e]
    raw = [1.0 if _nan(e["p_value"]) else e["p_value"] for e in tested]
    for entry, adjusted in zip(tested, CORRECTIONS[policy.slice_correction](raw), strict=True):
        entry["p_adjusted"] = adjusted
        entry["regression"] = adjusted < policy.alpha and entry["estimate"] < -policy.non_inferiority_margin
    reasons = [
        f"slice {e['column']}={e['value']}: {policy.primary_metric} difference is NaN/missing"
        for e in tested
        if _nan(e["estimate"], e["p_value"])
    ]
    reasons += [
        f"slice {e['column']}={e['value']}: {policy.primary_metric} worse by {-e['estimate']:.4f} "
        f"(adjusted p = {e['p_adjusted']:.3g} < {policy.alpha:g})"
        for e in tested
        if e["regression"]
    ]
    check = {
        "name": "slice_non_regression",
        "passed": not reasons,
        "metric": policy.primary_metric,
        "correction": policy.slice_correction,
        "tested": len(tested),
        "slices": entries,
        "hypothesis": "H0: challenger not worse than champion by more than the margin; fail = corrected reject",
    }
    return {**check, "reason": "; ".join(reasons)} if reasons else check


def _cost(cost: Mapping[str, Any] | None, key: str) -> float:
    value = (cost or {}).get(key)
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def _budget(name: str, key: str, limit: float, challenger_cost: Mapping | None, champion_cost: Mapping | None) -> dict:
    new, old = _cost(challenger_cost, key), _cost(champion_cost, key)
    check = {"name": name, "key": key, "challenger": new, "champion": old, "max_ratio": limit}
    for who, value in (("challenger", new), ("champion", old)):
        if _nan(value):
            return {**check, "ratio": NAN, "passed": False, "reason": f"{who} {key} is NaN/missing"}
    if old <= 0:
        return {**check, "ratio": NAN, "passed": False, "reason": f"champion {key} ({old:g}) is not positive"}
    ratio = new / old
    check.update(ratio=ratio, passed=ratio <= limit)
    if not check["passed"]:
        check["reason"] = f"{key}: challenger / champion = {ratio:.2f} exceeds {limit:g}"
    return check


def _floors(policy: Blessing, metrics: Mapping[str, float]) -> list[dict]:
    checks = []
    for metric, floor in policy.min_metrics.items():
        value = metrics[metric]
        higher = higher_is_better(metric)
        check = {"name": f"floor:{metric}", "metric": metric, "value": value, "floor": floor,
                 "direction": ">=" if higher else "<="}
        if _nan(value):
            check.update(passed=False, reason=f"{metric} is NaN/missing")
        else:
            check["passed"] = value >= floor if higher else value <= floor
            if not check["passed"]:
                check["reason"] = f"{metric} = {value:.4f} is not {check['direction']} floor {floor:g}"
        checks.append(check)
    return checks


# ------------------------------------------------------------------------------------------ no-skill floor

NO_SKILL_RULES = {
    "binary": "lower bound of the {level} DeLong CI of ROC AUC > 0.5 (a constant score has AUC 0.5)",
    "regression": "lower bound of the {level} bootstrap CI of R² > 0 (better than predicting the holdout mean)",
    "multiclass": "upper bound of the {level} paired bootstrap CI of log loss - no-skill log loss < 0 "
    "(the no-skill model predicts the training class frequencies)",
}


def _no_skill_binary(y: np.ndarray, score: np.ndarray, alpha: float) -> dict:
    d = delong(y, score, np.zeros_like(score))  # a constant: AUC 0.5 with no variance of its own
    test = _delong_test(d["difference"], d["se"], 0.0, alpha)
    return {"metric": "roc_auc", "method": "delong", "value": d["auc_a"], "no_skill": 0.5,
            "ci_low": 0.5 + test["ci_low"], "ci_high": 0.5 + test["ci_high"],
            "passed": not _nan(test["ci_low"]) and test["ci_low"] > 0}


def _no_skill_regression(y: np.ndarray, pred: np.ndarray, policy: Blessing, seed: int) -> dict:
    value = _metric("r2", y, pred, None, "regression")
    boots = [task_weighted("regression", c, y, pred, ["r2"])["r2"]
             for c in task_resample_counts("regression", y, policy.bootstrap_samples, seed)]
    low, high = percentile_interval(np.concatenate(boots) if boots else np.empty(0), 2 * policy.alpha)
    return {"metric": "r2", "method": "bootstrap", "value": value, "no_skill": 0.0, "ci_low": low, "ci_high": high,
            "passed": not _nan(low) and low > 0}


def _no_skill_multiclass(y: np.ndarray, proba: np.ndarray, baseline: np.ndarray, policy: Blessing, seed: int
                         ) -> dict:
    base = np.broadcast_to(np.asarray(baseline, dtype=float), proba.shape)
    # sign-adjusted (positive = challenger better): no-skill log loss - challenger log loss
    est, diffs = _paired_task("multiclass", "log_loss", y, (proba, None), (base, None), policy.bootstrap_samples, seed)
    low, high = percentile_interval(-diffs, 2 * policy.alpha)  # challenger - no skill: negative = better
    return {"metric": "log_loss", "method": "paired_bootstrap", "value": _metric("log_loss", y, proba, None,
            "multiclass"), "no_skill": _metric("log_loss", y, base, None, "multiclass"),
            "estimate": -est, "ci_low": low, "ci_high": high,
            "difference": "challenger log loss - no-skill log loss (negative = better than no skill)",
            "passed": not _nan(high) and high < 0}


def _no_skill_floor(task: str, policy: Blessing, y: np.ndarray, output: np.ndarray, baseline: Any, seed: int
                    ) -> dict:
    level = f"{1 - 2 * policy.alpha:.0%}"
    check: dict[str, Any] = {"name": "no_skill_floor", "rule": NO_SKILL_RULES[task].format(level=level),
                             "why": "cold start and blessing.min_metrics is empty: the floor is no skill"}
    if task == "multiclass" and baseline is None:
        return {**check, "passed": False, "reason": "no_skill_floor: baseline_output (the no-skill model's output "
                "on the holdout, tasks.no_skill_output) is missing; a multiclass cold start needs it"}
    if task == "binary":
        result = _no_skill_binary(y, output, policy.alpha)
    elif task == "regression":
        result = _no_skill_regression(y, output, policy, seed)
    else:
        try:
            result = _no_skill_multiclass(y, output, baseline, policy, seed)
        except ValueError as exc:
            return {**check, "passed": False, "reason": f"no_skill_floor: baseline_output is unusable: {exc}"}
    check.update(result)
    if _nan(check["ci_low"], check["ci_high"]):
        return {**check, "passed": False, "reason": f"no_skill_floor: {check['metric']} CI is NaN/missing"}
    if not check["passed"]:
        check["reason"] = f"no_skill_floor: not significantly better than no skill ({check['rule']}): " + (
            f"{check['metric']} = {check['value']:.4f}, {level} CI [{check['ci_low']:.4f}, {check['ci_high']:.4f}]"
            if task != "multiclass"
            else f"log loss {check['value']:.4f} vs no-skill {check['no_skill']:.4f}, difference "
            f"{check['estimate']:+.4f}, {level} CI [{check['ci_low']:+.4f}, {check['ci_high']:+.4f}]"
        )
    return check


# --------------------------------------------------------------------------------------------------- decide


def _metric_names(policy: Blessing, task: str) -> tuple[str, ...]:
    """The metrics a verdict records: binary METRICS (+ log_loss when the policy uses it), else the task's."""
    if task != "binary":
        return TASK_METRICS[task]
    used = {policy.primary_metric, *policy.min_metrics}
    return METRICS + tuple(m for m in TASK_METRICS["binary"] if m not in METRICS and m in used)


def _check_policy(policy: Blessing, task: str) -> None:
    allowed = TASK_METRICS[check_task(task)]
    used = [("blessing.primary_metric", policy.primary_metric)]
    used += [(f"blessing.min_metrics.{m}", m) for m in policy.min_metrics]
    for field, metric in used:
        if metric not in allowed:
            raise ValueError(f"{field}: {metric!r} is not a {task} metric (one of {list(allowed)})")


# ------------------------------------------------------------------------------------------------ fairness

FAIRNESS_SEED = 0x5A1F  # the fairness resamples' seed is [seed, FAIRNESS_SEED, column index]


def _fairness_metrics(policy: Blessing, task: str) -> list[str]:
    """The disparities compared: the policy's for binary; the primary metric's for multiclass and regression."""
    return list(policy.fairness.metrics) if task == "binary" else ["primary_metric_difference"]


def _fairness(policy: Blessing, task: str, y: np.ndarray, challenger: tuple, champion: tuple | None,
              sensitive: Mapping[str, np.ndarray], seed: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """verdict["fairness"] and, with a champion, the "fairness" check (None in a cold start)."""
    from crispflow.model.fairness import compare_fairness, fairness_report

    fair = policy.fairness
    metrics = _fairness_metrics(policy, task)
    common = {"min_rows": policy.min_slice_rows, "alpha": policy.alpha, "n_boot": policy.bootstrap_samples,
              "seed": [int(seed), FAIRNESS_SEED], "primary_metric": policy.primary_metric}
    section: dict[str, Any] = {"mode": fair.mode, "metrics": metrics, "max_increase": fair.max_increase,
                               "correction": "holm", "alpha": policy.alpha, "min_rows": policy.min_slice_rows}
    if champion is None:
        report = fairness_report(task, y, *challenger, sensitive, **common)
        return {**section, "challenger": report, "champion": None, "comparison": [], "decision": "pass",
                "note": "no champion: the report only, no fairness check"}, None
    result = compare_fairness(task, y, challenger, champion, sensitive, metrics=metrics,
                              max_increase=fair.max_increase, **common)
    decision = "pass" if result["passed"] else fair.mode
    section.update(challenger=result["challenger"], champion=result["champion"], comparison=result["comparison"],
                   decision=decision)
    check: dict[str, Any] = {
        "name": "fairness", "mode": fair.mode, "metrics": metrics, "max_increase": fair.max_increase,
        "correction": "holm", "tested": result["tested"], "decision": decision,
        "hypothesis": "H0: challenger disparity - champion disparity <= max_increase; fail = corrected reject",
    }
    text = "; ".join(result["reasons"])
    if result["passed"]:
        check["passed"] = True
    elif fair.mode == "block":
        check.update(passed=False, reason=text)
    else:
        check.update(passed=True, warning=text)
    return section, check


def decide(
    spec_blessing: Blessing,
    y_true: np.ndarray,
    challenger_score: np.ndarray,
    challenger_threshold: float | None,
    *,
    task: str = "binary",
    champion_score: np.ndarray | None = None,
    champion_threshold: float | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
    challenger_cost: dict | None = None,
    champion_cost: dict | None = None,
    seed: int = 0,
    baseline_output: np.ndarray | None = None,
    sensitive: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The blessing verdict as a JSON dict: blessed, mode, reasons (empty when blessed), checks and evidence.

    Outputs follow `crispflow.model.tasks` (binary P(positive), multiclass (n, k) probabilities with int-code
    labels, regression predictions); thresholds apply to binary only. `baseline_output` is the no-skill model's
    output on the holdout (`tasks.no_skill_output`), used by the cold-start floor when `min_metrics` is empty
    (needed for multiclass). `sensitive` (column -> raw values per holdout row) adds verdict["fairness"], its
    "fairness" check against a champion, and verdict["warnings"] (warn mode's failures)."""
    policy = spec_blessing
    _check_policy(policy, task)
    y, challenger_s = task_inputs(task, y_true, challenger_score)
    challenger = (challenger_s, challenger_threshold)
    metrics = {m: _metric(m, y, *challenger, task) for m in _metric_names(policy, task)}
    verdict: dict[str, Any] = {
        "task": task,
        "mode": "cold_start" if champion_score is None else "versus_champion",
        "primary_metric": policy.primary_metric,
        "margin": policy.non_inferiority_margin,
        "alpha": policy.alpha,
        "n": int(y.shape[0]),
    }
    if task == "binary":
        verdict["positives"] = int(y.sum())
    verdict.update({
        "bootstrap_samples": policy.bootstrap_samples,
        "seed": int(seed),
        "challenger_threshold": None if challenger_threshold is None else float(challenger_threshold),
        "champion_threshold": None if champion_threshold is None else float(champion_threshold),
        "challenger_metrics": metrics,
        "champion_metrics": None,
    })
    checks = []
    champion = None if champion_score is None else (task_inputs(task, y, champion_score)[1], champion_threshold)
    fairness, fairness_check = None, None
    if sensitive:
        fairness, fairness_check = _fairness(policy, task, y, challenger, champion, sensitive, seed)
    if champion is not None:
        verdict["champion_metrics"] = {m: _metric(m, y, *champion, task) for m in metrics}
        checks.append(_noninferiority(policy, y, challenger, champion, seed, task))
        if slices:
            checks.append(_slice_check(policy, y, slices, challenger, champion, seed, task))
        if fairness_check is not None:
            checks.append(fairness_check)
        checks.append(
            _budget("latency_budget", "latency_p95_ms", policy.max_latency_ratio, challenger_cost, champion_cost)
        )
        checks.append(_budget("size_budget", "size_bytes", policy.max_size_ratio, challenger_cost, champion_cost))
    elif not policy.min_metrics:
        checks.append(_no_skill_floor(task, policy, y, challenger_s, baseline_output, seed))
    checks += _floors(policy, metrics)
    reasons = [c["reason"] for c in checks if not c["passed"]]
    if fairness is not None:
        verdict["fairness"] = fairness
        verdict["warnings"] = [c["warning"] for c in checks if c.get("warning")]
    return {"blessed": not reasons, "reasons": reasons, **verdict, "checks": checks}


def verdict_summary(verdict: Mapping[str, Any]) -> str:
    """One line for logs: the decision, the primary comparison and the reasons."""
    head = f"{'BLESSED' if verdict['blessed'] else 'NOT BLESSED'} ({verdict['mode']})"
    checks = verdict["checks"]
    main = next((c for c in checks if c["name"] == "non_inferiority"), None)
    if main is not None:
        head += (
            f": {main['metric']} {_difference(main['metric'])} {main['estimate']:+.4f} "
            f"[{main['ci_low']:+.4f}, {main['ci_high']:+.4f}] ({main['method']}, margin {main['margin']:g})"
        )
    head += f"; {sum(c['passed'] for c in checks)}/{len(checks)} checks passed"
    head += f"; {'; '.join(verdict['reasons'])}" if verdict["reasons"] else ""
    return head + (f"; warnings: {'; '.join(verdict['warnings'])}" if verdict.get("warnings") else "")
