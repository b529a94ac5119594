"""The blessing gate: may a challenger replace the champion? Statistics on a frozen holdout, not a point comparison.

Pure numpy/scipy: this module never imports Airflow or MLflow (DeLong, resampling, Holm and Benjamini-Hochberg
come from `crispflow.stats`). `decide` returns a JSON verdict. With a champion (both models scored on the same
holdout rows) the checks are:

- **non_inferiority** of the primary metric: the difference challenger - champion, sign-adjusted so that positive
  is better (also for brier), with a two-sided (1 - 2 alpha) CI; passes when its lower bound (a one-sided alpha
  test) is above -margin. roc_auc uses DeLong's test for correlated ROC curves (fast midrank version, Sun & Xu
  2014); the other metrics a paired stratified bootstrap (both models on the same resamples).
- **slice_non_regression**: in each slice value with >= min_slice_rows rows and >= 2 rows of each class, a
  one-sided test of H0 "the challenger is not worse than the champion by more than the margin" (DeLong z for
  roc_auc, paired bootstrap otherwise). p-values are corrected across all tested slices (Holm or
  Benjamini-Hochberg); a slice fails when its corrected test rejects H0 at alpha and its estimate is below
  -margin: a credible regression. Noise across many small slices is not flagged (FWER/FDR control).
- **latency_budget** / **size_budget**: challenger / champion ratios of `latency_p95_ms` and `size_bytes`.
- **floor:<metric>** for each of `min_metrics` (value >= floor; brier <= floor), always checked, and the only
  checks in cold start (no champion). A cold start with no floors is not blessed: there is nothing to bless on.

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
    HIGHER_IS_BETTER,
    METRICS,
    THRESHOLD_METRICS,
    compute_metric,
    slice_groups,
    weighted_metrics,
)
from crispflow.stats import (
    CORRECTIONS,
    NAN,
    as_inputs,
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


def _metric(name: str, y: np.ndarray, score: np.ndarray, threshold: float | None) -> float:
    pred = _predictions(score, threshold)
    if pred is None:
        if name in THRESHOLD_METRICS:
            return NAN
        pred = np.zeros_like(y)
    return compute_metric(name, y, score, pred)


def _sign(metric: str) -> float:
    return 1.0 if HIGHER_IS_BETTER[metric] else -1.0


def paired_bootstrap(
    metric: str,
    y_true: np.ndarray,
    score_a: np.ndarray,
    threshold_a: float | None,
    score_b: np.ndarray,
    threshold_b: float | None,
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
) -> tuple[float, np.ndarray]:
    """Sign-adjusted difference a - b (positive = a better) on the whole sample and on `n_boot` resamples.

    Each stratified resample is drawn once and both models are scored on it. A metric needing a threshold is
    NaN for a model without one.
    """
    y, a = as_inputs(y_true, score_a)
    _, b = as_inputs(y, score_b)
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


def _compare(policy: Blessing, y: np.ndarray, challenger: tuple, champion: tuple, alpha: float, seed: Any) -> dict:
    """Difference of the primary metric with its (1 - 2 alpha) CI and both one-sided p-values."""
    metric, margin = policy.primary_metric, policy.non_inferiority_margin
    if metric == "roc_auc":
        d = delong(y, challenger[0], champion[0])
        est, se = d["difference"], d["se"]
        z = float(norm.ppf(1 - alpha))
        low, high = est - z * se, est + z * se
        if se > 0:
            p_inferior, p_regression = float(norm.sf((est + margin) / se)), float(norm.cdf((est + margin) / se))
        else:  # identical rankings (or NaN): the estimate is exact
            p_inferior = NAN if math.isnan(est) else float(est <= -margin)
            p_regression = NAN if math.isnan(est) else float(est >= -margin)
        return {
            "method": "delong",
            "estimate": est,
            "se": se,
            "ci_low": low,
            "ci_high": high,
            "p_inferior": p_inferior,
            "p_regression": p_regression,
        }
    est, diffs = paired_bootstrap(metric, y, *challenger, *champion, n_boot=policy.bootstrap_samples, seed=seed)
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


def _noninferiority(policy: Blessing, y: np.ndarray, challenger: tuple, champion: tuple, seed: int) -> dict:
    metric, margin, alpha = policy.primary_metric, policy.non_inferiority_margin, policy.alpha
    result = _compare(policy, y, challenger, champion, alpha, seed)
    check = {
        "name": "non_inferiority",
        "metric": metric,
        "margin": margin,
        "ci_level": 1 - 2 * alpha,
        "challenger": _metric(metric, y, *challenger),
        "champion": _metric(metric, y, *champion),
        **{k: v for k, v in result.items() if not k.startswith("p_")},
        "p_value": result["p_inferior"],
        "hypothesis": "H0: challenger worse than champion by more than the margin; pass = CI lower bound > -margin",
    }
    if _nan(result["estimate"], result["ci_low"]):
        return {**check, "passed": False, "reason": f"{metric} difference (challenger - champion) is NaN/missing"}
    passed = result["ci_low"] > -margin
    check["passed"] = passed
    if not passed:
        check["reason"] = (
            f"{metric}: challenger - champion = {result['estimate']:+.4f}, lower bound of the "
            f"{1 - 2 * alpha:.0%} CI {result['ci_low']:+.4f} is not above -margin {-margin:g}"
        )
    return check


def _rows(model: tuple, rows: np.ndarray) -> tuple:
    return model[0][rows], model[1]


def _slice_entry(
    policy: Blessing, y: np.ndarray, rows: np.ndarray, challenger: tuple, champion: tuple, seed: Any
) -> dict:
    positives = int(y[rows].sum())
    entry: dict[str, Any] = {"n": int(rows.size), "positives": positives}
    if rows.size < policy.min_slice_rows:
        return {**entry, "skipped": f"fewer than {policy.min_slice_rows} rows"}
    if positives < 2 or rows.size - positives < 2:
        return {**entry, "skipped": "fewer than 2 rows of a class"}
    result = _compare(policy, y[rows], _rows(challenger, rows), _rows(champion, rows), policy.alpha, seed)
    return {
        **entry,
        "method": result["method"],
        "estimate": result["estimate"],
        "ci_low": result["ci_low"],
        "ci_high": result["ci_high"],
        "p_value": result["p_regression"],
    }


def _slice_check(
    policy: Blessing, y: np.ndarray, slices: Mapping[str, np.ndarray], challenger: tuple, champion: tuple, seed: int
) -> dict:
    entries = []
    for k, (column, values) in enumerate(slices.items()):
        for j, (value, rows) in enumerate(slice_groups(values, y.size).items()):
            entry = _slice_entry(policy, y, rows, challenger, champion, [seed, 1 + k, j])
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


def _floors(policy: Blessing, metrics: Mapping[str, float], cold_start: bool) -> list[dict]:
    if cold_start and not policy.min_metrics:
        return [
            {
                "name": "floors",
                "passed": False,
                "reason": "cold start: blessing.min_metrics is empty, there is no floor to bless against",
            }
        ]
    checks = []
    for metric, floor in policy.min_metrics.items():
        value = metrics[metric]
        check = {
            "name": f"floor:{metric}",
            "metric": metric,
            "value": value,
            "floor": floor,
            "direction": ">=" if HIGHER_IS_BETTER[metric] else "<=",
        }
        if _nan(value):
            check.update(passed=False, reason=f"{metric} is NaN/missing")
        else:
            check["passed"] = value >= floor if HIGHER_IS_BETTER[metric] else value <= floor
            if not check["passed"]:
                check["reason"] = f"{metric} = {value:.4f} is not {check['direction']} floor {floor:g}"
        checks.append(check)
    return checks


# --------------------------------------------------------------------------------------------------- decide


def decide(
    spec_blessing: Blessing,
    y_true: np.ndarray,
    challenger_score: np.ndarray,
    challenger_threshold: float,
    *,
    champion_score: np.ndarray | None = None,
    champion_threshold: float | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
    challenger_cost: dict | None = None,
    champion_cost: dict | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The blessing verdict as a JSON dict: blessed, mode, reasons (empty when blessed), checks and evidence."""
    policy = spec_blessing
    y, challenger_s = as_inputs(y_true, challenger_score)
    challenger = (challenger_s, challenger_threshold)
    metrics = {m: _metric(m, y, *challenger) for m in METRICS}
    verdict: dict[str, Any] = {
        "mode": "cold_start" if champion_score is None else "versus_champion",
        "primary_metric": policy.primary_metric,
        "margin": policy.non_inferiority_margin,
        "alpha": policy.alpha,
        "n": int(y.size),
        "positives": int(y.sum()),
        "bootstrap_samples": policy.bootstrap_samples,
        "seed": int(seed),
        "challenger_threshold": None if challenger_threshold is None else float(challenger_threshold),
        "champion_threshold": None if champion_threshold is None else float(champion_threshold),
        "challenger_metrics": metrics,
        "champion_metrics": None,
    }
    checks = []
    if champion_score is not None:
        champion = (as_inputs(y, champion_score)[1], champion_threshold)
        verdict["champion_metrics"] = {m: _metric(m, y, *champion) for m in METRICS}
        checks.append(_noninferiority(policy, y, challenger, champion, seed))
        if slices:
            checks.append(_slice_check(policy, y, slices, challenger, champion, seed))
        checks.append(
            _budget("latency_budget", "latency_p95_ms", policy.max_latency_ratio, challenger_cost, champion_cost)
        )
        checks.append(_budget("size_budget", "size_bytes", policy.max_size_ratio, challenger_cost, champion_cost))
    checks += _floors(policy, metrics, cold_start=champion_score is None)
    reasons = [c["reason"] for c in checks if not c["passed"]]
    return {"blessed": not reasons, "reasons": reasons, **verdict, "checks": checks}


def verdict_summary(verdict: Mapping[str, Any]) -> str:
    """One line for logs: the decision, the primary comparison and the reasons."""
    head = f"{'BLESSED' if verdict['blessed'] else 'NOT BLESSED'} ({verdict['mode']})"
    checks = verdict["checks"]
    main = next((c for c in checks if c["name"] == "non_inferiority"), None)
    if main is not None:
        head += (
            f": {main['metric']} challenger - champion {main['estimate']:+.4f} "
            f"[{main['ci_low']:+.4f}, {main['ci_high']:+.4f}] ({main['method']}, margin {main['margin']:g})"
        )
    head += f"; {sum(c['passed'] for c in checks)}/{len(checks)} checks passed"
    return head + (f"; {'; '.join(verdict['reasons'])}" if verdict["reasons"] else "")
