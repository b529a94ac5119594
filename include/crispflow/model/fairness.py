"""Fairness on the frozen holdout: metrics per group of each sensitive column with CIs, disparities, and the
non-regression test of a challenger's disparities against the champion's.

Pure numpy/pandas/fairlearn: never Airflow or MLflow. Outputs follow `crispflow.model.tasks` (binary P(positive)
decided at `score >= threshold`, multiclass (n, k) probabilities with int-code labels, regression predictions).

- **Groups**: the distinct values of a sensitive column (as strings, missing values as `<missing>`, like the
  evaluation's slices). A group with fewer than `min_rows` rows (binary: or fewer than 2 rows of a class, where TPR,
  FPR and ROC AUC are undefined or degenerate) is suppressed: listed with its size, never measured, and left out
  of the disparities.
- **Metrics per group** (fairlearn's `MetricFrame`): binary selection rate, TPR, FPR, precision and ROC AUC;
  regression MAE, RMSE and mean prediction; multiclass accuracy and log loss; plus the primary metric when it is
  none of these. Undefined values (precision with no predicted positive; every threshold metric of a binary
  model without a threshold) are None.
- **Disparities** over the reported groups: binary demographic-parity difference (largest gap of selection rates)
  and equalized-odds difference (the larger of the TPR and FPR gaps), fairlearn's `metrics` functions; for every
  task `primary_metric_difference`, the largest gap (max - min) of the primary metric between groups.
- **CIs**: percentile intervals of a bootstrap over rows stratified by group (and class, for classification), so
  each resample keeps every group's size and class counts. The disparity of a range is biased upwards when the
  true gap is near 0; comparisons pair both models on the same resamples, where that bias largely cancels.
- **Comparison** (`compare_fairness`): for each (column, metric), the paired bootstrap of challenger disparity -
  champion disparity, the one-sided p-value of H0 "it widens by at most `max_increase`" ((1 + k) / (1 + B)),
  Holm-corrected across all tests; a test fails when its corrected p-value is below alpha and its estimate above
  `max_increase` (as the blessing gate's slice check). A NaN estimate never passes.

Every result is JSON-able: Python floats, ints, strings, lists and dicts; undefined numbers are None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crispflow.model.evaluation import (
    check_metric,
    check_task,
    metric,
    slice_groups,
    task_inputs,
    task_weighted,
    too_small,
)
from crispflow.spec import TASK_DEFAULT_METRICS
from crispflow.stats import NAN, bootstrap_p_value, class_resample_counts, holm, percentile_interval, ratio

GROUP_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("selection_rate", "tpr", "fpr", "precision", "roc_auc"),
    "regression": ("mae", "rmse", "mean_prediction"),
    "multiclass": ("accuracy", "log_loss"),
}
CUSTOM = frozenset({"selection_rate", "tpr", "fpr", "mean_prediction"})  # not crispflow metrics
BINARY_DISPARITIES = ("demographic_parity_difference", "equalized_odds_difference")
PRIMARY_DISPARITY = "primary_metric_difference"
DISPARITY_RULES = {
    "demographic_parity_difference": "max - min over groups of the selection rate",
    "equalized_odds_difference": "the larger of (max - min over groups) of TPR and of FPR",
    PRIMARY_DISPARITY: "max - min over groups of the primary metric",
}

Model = tuple[np.ndarray, float | None]  # (output, threshold)


def _num(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _interval(point: float, boots: np.ndarray, alpha: float) -> dict[str, float | None]:
    low, high = percentile_interval(boots, alpha)
    return {"value": _num(point), "ci_low": _num(low), "ci_high": _num(high)}


def disparities(task: str) -> tuple[str, ...]:
    """The disparities a report measures for `task`."""
    return (*BINARY_DISPARITIES, PRIMARY_DISPARITY) if check_task(task) == "binary" else (PRIMARY_DISPARITY,)


# ------------------------------------------------------------------------------------------------ groups


@dataclass(frozen=True)
class _Partition:
    """A sensitive column's groups: the reported ones (rows as positions among the kept rows) and the rest."""

    kept_rows: np.ndarray  # positions in the holdout of every row of a reported group
    groups: dict[str, np.ndarray]  # reported group -> positions in kept_rows
    labels: np.ndarray  # the group of each kept row
    suppressed: list[dict[str, Any]]
    n: int


def _partition(task: str, y: np.ndarray, values: Any, min_rows: int) -> _Partition:
    kept: dict[str, np.ndarray] = {}
    suppressed = []
    for value, rows in slice_groups(values, y.shape[0]).items():
        reason = too_small(task, y[rows], min_rows)
        if reason is None:
            kept[value] = rows
        else:
            suppressed.append({"value": value, "n": int(rows.size), "reason": reason})
    kept_rows = np.concatenate(list(kept.values())) if kept else np.empty(0, dtype=np.int64)
    labels = np.concatenate([np.full(r.size, v, dtype=object) for v, r in kept.items()]) if kept else np.empty(0)
    offsets = np.cumsum([0, *(r.size for r in kept.values())])
    groups = {v: np.arange(offsets[i], offsets[i + 1]) for i, v in enumerate(kept)}
    return _Partition(kept_rows, groups, labels, suppressed, int(y.shape[0]))


def _strata(task: str, y: np.ndarray, part: _Partition) -> np.ndarray:
    """Stratum code of each kept row: its group, times its class for classification."""
    group = np.empty(part.labels.size, dtype=np.int64)
    for i, rows in enumerate(part.groups.values()):
        group[rows] = i
    if task == "regression":
        return group
    k = 2 if task == "binary" else int(y.max()) + 1 if y.size else 1
    return group * k + y.astype(np.int64)


# --------------------------------------------------------------------------------------------- one model


@dataclass(frozen=True)
class _Inputs:
    """One model's inputs on the kept rows of a column."""

    task: str
    y: np.ndarray
    output: np.ndarray
    threshold: float | None

    @property
    def pred(self) -> np.ndarray | None:
        """Binary decisions (output >= threshold), None without a usable threshold."""
        if self.task != "binary" or self.threshold is None or not math.isfinite(self.threshold):
            return None
        return self.output >= self.threshold


def _point_fn(inputs: _Inputs, name: str) -> Any:
    """A MetricFrame metric: (y_true, row positions) -> value, computed on the positions' rows."""
    from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate

    rates = {"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate}
    pred = inputs.pred

    def fn(_y_true: Any, positions: Any) -> float:
        rows = np.asarray(positions, dtype=np.int64)
        y, out = inputs.y[rows], inputs.output[rows]
        if name in rates:
            if pred is None:
                return NAN
            return float(rates[name](y.astype(int), pred[rows].astype(int), pos_label=1))
        if name == "mean_prediction":
            return float(np.mean(out)) if rows.size else NAN
        return metric(name, inputs.task, y, out, inputs.threshold)

    return fn


def _points(inputs: _Inputs, part: _Partition, names: Sequence[str], primary: str
            ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-group metric values (fairlearn's MetricFrame) and the disparities' point values."""
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference

    frame = MetricFrame(metrics={n: _point_fn(inputs, n) for n in names}, y_true=np.zeros(part.labels.size),
                        y_pred=np.arange(part.labels.size), sensitive_features=part.labels)
    by_group = {str(g): {n: float(v) for n, v in row.items()} for g, row in frame.by_group.iterrows()}
    points = {PRIMARY_DISPARITY: float(frame.difference(method="between_groups")[primary])}
    if inputs.task == "binary":
        pred = inputs.pred
        if pred is None:
            points.update(dict.fromkeys(BINARY_DISPARITIES, NAN))
        else:
            args = (inputs.y.astype(int), pred.astype(int))
            points["demographic_parity_difference"] = float(
                demographic_parity_difference(*args, sensitive_features=part.labels))
            points["equalized_odds_difference"] = float(
                equalized_odds_difference(*args, sensitive_features=part.labels))
    return by_group, points


def _group_boot(inputs: _Inputs, counts: np.ndarray, rows: np.ndarray, names: Sequence[str]
                ) -> dict[str, np.ndarray]:
    """Each metric of one group on each resample (rows of `counts`, restricted to the group's columns)."""
    c = counts[:, rows]
    y, out, pred = inputs.y[rows], inputs.output[rows], inputs.pred
    total = c.sum(axis=1)
    res: dict[str, np.ndarray] = {}
    if "mean_prediction" in names:
        res["mean_prediction"] = ratio(c @ out, total)
    if {"selection_rate", "tpr", "fpr"} & set(names):
        if pred is None:
            res.update({n: np.full(c.shape[0], np.nan) for n in ("selection_rate", "tpr", "fpr")})
        else:
            p, yb = pred[rows].astype(float), y.astype(bool)
            res["selection_rate"] = ratio(c @ p, total)
            res["tpr"] = ratio(c @ (p * yb), c @ yb.astype(float))
            res["fpr"] = ratio(c @ (p * ~yb), c @ (~yb).astype(float))
    known = [n for n in names if n not in CUSTOM]
    if known:
        res.update(task_weighted(inputs.task, c, y, out, known, inputs.threshold))
    return {n: res[n] for n in names}


def _spread(values: np.ndarray) -> np.ndarray:
    """max - min over the groups (axis 0) of the finite values; NaN where none is (pandas' skipna)."""
    finite = np.isfinite(values)
    high = np.where(finite, values, -np.inf).max(axis=0)
    low = np.where(finite, values, np.inf).min(axis=0)
    return np.where(finite.any(axis=0), high - low, np.nan)


def _disparity_boot(per_group: dict[str, dict[str, np.ndarray]], task: str, primary: str) -> dict[str, np.ndarray]:
    """Each disparity on each resample, from the groups' metrics."""
    def stack(name: str) -> np.ndarray:
        return np.stack([g[name] for g in per_group.values()])

    out = {PRIMARY_DISPARITY: _spread(stack(primary))}
    if task == "binary":
        out["demographic_parity_difference"] = _spread(stack("selection_rate"))
        out["equalized_odds_difference"] = np.fmax(_spread(stack("tpr")), _spread(stack("fpr")))
    return out


# ---------------------------------------------------------------------------------------------- a column


@dataclass(frozen=True)
class _Column:
    """One model on one sensitive column: the report entry and the disparities' points and resamples."""

    report: dict[str, Any]
    points: dict[str, float]
    boots: dict[str, np.ndarray]


def _between(by_group: Mapping[str, Mapping[str, float]], name: str) -> list[str] | None:
    """[group with the smallest, group with the largest] finite value of `name`."""
    values = {g: v[name] for g, v in by_group.items() if math.isfinite(v[name])}
    if len(values) < 2:
        return None
    return [min(values, key=values.__getitem__), max(values, key=values.__getitem__)]


def _disparity_entries(task: str, by_group: Mapping[str, Mapping[str, float]], points: Mapping[str, float],
                       boots: Mapping[str, np.ndarray], primary: str, alpha: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in disparities(task):
        entry = {**_interval(points[name], boots[name], alpha), "rule": DISPARITY_RULES[name]}
        if name == PRIMARY_DISPARITY:
            entry.update(metric=primary, between=_between(by_group, primary))
        elif name == "demographic_parity_difference":
            entry["between"] = _between(by_group, "selection_rate")
        else:
            gaps = {r: _spread(np.array([[v[r]] for v in by_group.values()]))[0] for r in ("tpr", "fpr")}
            worst = "fpr" if np.nan_to_num(gaps["fpr"], nan=-1) > np.nan_to_num(gaps["tpr"], nan=-1) else "tpr"
            entry.update(rate=worst, between=_between(by_group, worst))
        out[name] = entry
    return out


def _columns(task: str, y: np.ndarray, models: Sequence[Model], values: Any, *, names: Sequence[str],
             primary: str, min_rows: int, alpha: float, n_boot: int, seed: Any) -> list[_Column]:
    """Every model on one sensitive column, all on the same resamples (paired)."""
    part = _partition(task, y, values, min_rows)
    y_kept = y[part.kept_rows]
    inputs = [_Inputs(task, y_kept, out[part.kept_rows], thr) for out, thr in models]
    per_model: list[dict[str, dict[str, list[np.ndarray]]]] = [
        {g: {n: [] for n in names} for g in part.groups} for _ in models
    ]
    if part.groups:
        for counts in class_resample_counts(_strata(task, y_kept, part), n_boot, seed):
            for m, model in enumerate(inputs):
                for g, rows in part.groups.items():
                    for n, v in _group_boot(model, counts, rows, names).items():
                        per_model[m][g][n].append(v)
    out = []
    for m, model in enumerate(inputs):
        boots = {g: {n: _concat(v, n_boot) for n, v in d.items()} for g, d in per_model[m].items()}
        by_group, points = _points(model, part, names, primary) if part.groups else ({}, {})
        groups = [_group_entry(task, y_kept, g, rows, by_group[g], boots[g], alpha) for g, rows in part.groups.items()]
        report: dict[str, Any] = {"n": part.n, "groups": groups, "suppressed": part.suppressed}
        if len(part.groups) < 2:  # no disparity between fewer than two groups
            report["note"] = (f"fewer than 2 groups with at least {min_rows} rows"
                              + " and 2 rows of each class" * (task == "binary"))
            none = {"value": None, "ci_low": None, "ci_high": None}
            report["disparities"] = {n: {**none, "rule": DISPARITY_RULES[n]} for n in disparities(task)}
            nan = dict.fromkeys(disparities(task), NAN)
            out.append(_Column(report, nan, {n: np.full(n_boot, np.nan) for n in nan}))
            continue
        disp_boots = _disparity_boot(boots, task, primary)
        report["disparities"] = _disparity_entries(task, by_group, points, disp_boots, primary, alpha)
        out.append(_Column(report, points, disp_boots))
    return out


def _concat(parts: list[np.ndarray], n_boot: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.full(n_boot, np.nan)


def _group_entry(task: str, y: np.ndarray, value: str, rows: np.ndarray, point: Mapping[str, float],
                 boots: Mapping[str, np.ndarray], alpha: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"value": value, "n": int(rows.size)}
    if task == "binary":
        entry["positives"] = int(y[rows].sum())
    entry["metrics"] = {n: _interval(point[n], boots[n], alpha) for n in point}
    return entry


# ------------------------------------------------------------------------------------------------ public


def _prepare(task: str, primary_metric: str | None) -> tuple[str, list[str]]:
    primary = primary_metric or TASK_DEFAULT_METRICS[check_task(task)][1]
    check_metric(primary, task)
    names = list(GROUP_METRICS[task])
    return primary, names + ([primary] if primary not in names else [])


def _seed(seed: int | Sequence[int], k: int) -> list[int]:
    """The resamples' seed of the k-th sensitive column."""
    base = _seed_json(seed)
    return [*([base] if isinstance(base, int) else base), k]


def _seed_json(seed: int | Sequence[int]) -> int | list[int]:
    return int(seed) if isinstance(seed, int | np.integer) else [int(s) for s in seed]


def _header(task: str, threshold: float | None, primary: str, names: Sequence[str], min_rows: int, alpha: float,
            n_boot: int, seed: Any) -> dict[str, Any]:
    return {"task": task, "threshold": _num(threshold) if task == "binary" else None, "primary_metric": primary,
            "metrics": list(names), "disparities": list(disparities(task)), "min_rows": int(min_rows),
            "ci_level": 1 - alpha, "n_boot": int(n_boot), "seed": _seed_json(seed),
            "method": "percentile bootstrap stratified by group" + (" and class" if task != "regression" else "")}


def fairness_report(task: str, y: np.ndarray, output: np.ndarray, threshold: float | None,
                    groups: Mapping[str, np.ndarray], *, min_rows: int, alpha: float, n_boot: int,
                    seed: int | Sequence[int], primary_metric: str | None = None) -> dict[str, Any]:
    """Per sensitive column (`groups`: column -> raw values per holdout row): the metrics of each group with
    (1 - alpha) CIs, the suppressed groups and the disparities with CIs. `primary_metric` defaults to the task's
    default blessing metric (binary roc_auc, multiclass log_loss, regression rmse). JSON-able (no NaN)."""
    primary, names = _prepare(task, primary_metric)
    y, out = task_inputs(task, y, output)
    columns = {
        column: _columns(task, y, [(out, threshold)], values, names=names, primary=primary, min_rows=min_rows,
                         alpha=alpha, n_boot=n_boot, seed=_seed(seed, k))[0].report
        for k, (column, values) in enumerate(groups.items())
    }
    return {**_header(task, threshold, primary, names, min_rows, alpha, n_boot, seed), "columns": columns}


def compare_fairness(task: str, y: np.ndarray, challenger: Model, champion: Model, groups: Mapping[str, np.ndarray],
                     *, metrics: Sequence[str], max_increase: float, min_rows: int, alpha: float, n_boot: int,
                     seed: int | Sequence[int], primary_metric: str | None = None) -> dict[str, Any]:
    """Both models' reports (each equal to its `fairness_report` with the same seed) and, for each sensitive column
    and each of `metrics` (disparity names), the paired test of H0 "challenger disparity - champion disparity <=
    max_increase", Holm-corrected across all tests. Returns {"challenger", "champion", "metrics", "max_increase",
    "correction", "alpha", "comparison" (one entry per test, or "skipped" with the reason), "tested", "passed",
    "reasons"}; JSON-able."""
    primary, names = _prepare(task, primary_metric)
    unknown = [m for m in metrics if m not in disparities(task)]
    if unknown:
        raise ValueError(f"metrics: {unknown} are not {task} disparities (one of {list(disparities(task))})")
    y, chal = task_inputs(task, y, challenger[0])
    _, champ = task_inputs(task, y, champion[0])
    reports: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    tests = []
    for k, (column, values) in enumerate(groups.items()):
        a, b = _columns(task, y, [(chal, challenger[1]), (champ, champion[1])], values, names=names,
                        primary=primary, min_rows=min_rows, alpha=alpha, n_boot=n_boot, seed=_seed(seed, k))
        reports[0][column], reports[1][column] = a.report, b.report
        tests += [_test(column, m, a, b, max_increase, alpha) for m in metrics]
    reasons = _correct(tests, alpha, max_increase)
    return {
        "challenger": {**_header(task, challenger[1], primary, names, min_rows, alpha, n_boot, seed),
                       "columns": reports[0]},
        "champion": {**_header(task, champion[1], primary, names, min_rows, alpha, n_boot, seed),
                     "columns": reports[1]},
        "metrics": list(metrics), "max_increase": max_increase, "correction": "holm", "alpha": alpha,
        "comparison": tests,
        "tested": sum("skipped" not in t for t in tests),
        "passed": not reasons,
        "reasons": reasons,
    }


def _test(column: str, name: str, a: _Column, b: _Column, max_increase: float, alpha: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"column": column, "metric": name}
    if "note" in a.report:
        return {**entry, "skipped": a.report["note"]}
    diffs = a.boots[name] - b.boots[name]
    estimate = a.points[name] - b.points[name]
    low, high = percentile_interval(diffs, 2 * alpha)
    return {**entry, "challenger": _num(a.points[name]), "champion": _num(b.points[name]),
            "estimate": _num(estimate), "ci_low": _num(low), "ci_high": _num(high), "ci_level": 1 - 2 * alpha,
            "p_value": _num(bootstrap_p_value(diffs, max_increase, lower_tail=True)),
            "hypothesis": "H0: challenger disparity - champion disparity <= max_increase; fail = corrected reject"}


def _correct(tests: list[dict[str, Any]], alpha: float, max_increase: float) -> list[str]:
    """Holm-adjust the tested entries in place (`p_adjusted`, `widened`); the reasons of those that fail."""
    tested = [t for t in tests if "skipped" not in t]
    raw = [1.0 if t["p_value"] is None else t["p_value"] for t in tested]
    reasons = []
    for t, adjusted in zip(tested, holm(raw), strict=True):
        t["p_adjusted"] = adjusted
        t["widened"] = t["estimate"] is not None and adjusted < alpha and t["estimate"] > max_increase
        if t["estimate"] is None or t["p_value"] is None:
            reasons.append(f"fairness {t['column']}: {t['metric']} difference (challenger - champion) is NaN/missing")
        elif t["widened"]:
            reasons.append(f"fairness {t['column']}: {t['metric']} widened by {t['estimate']:+.4f} "
                           f"({t['champion']:.4f} -> {t['challenger']:.4f}; adjusted p = {adjusted:.3g} < "
                           f"{alpha:g}, max_increase {max_increase:g})")
    return reasons


def fairness_summary(verdict: Mapping[str, Any]) -> dict[str, Any] | None:
    """The small form of a verdict's fairness (for XCom): decision, mode and each sensitive column's disparities
    (value and CI); None when the verdict has no fairness report."""
    fairness = verdict.get("fairness")
    if not fairness:
        return None
    columns = (fairness.get("challenger") or {}).get("columns") or {}
    return {"decision": fairness.get("decision"), "mode": fairness.get("mode"),
            "columns": {column: {"disparities": {name: {k: d.get(k) for k in ("value", "ci_low", "ci_high")}
                                                 for name, d in (report.get("disparities") or {}).items()},
                                 **({"note": report["note"]} if report.get("note") else {})}
                        for column, report in columns.items()}}
