"""Drift of a window (a DataFrame or an Arrow Table) against a reference profile: two-sample tests on binned
counts, FDR control.

Every window is binned once against the profile's edges/categories (`searchsorted` / hash-factorise, then
`bincount`), so one pass over the data gives everything below. Tests treat the reference counts as a sample too
(two-sample tests on counts), so large windows do not turn reference noise into false alarms. The binning, the
tests, PSI and the multiple-testing correction come from `crispflow.stats`; this module decides:

- **numeric** features: Kolmogorov-Smirnov on the binned CDFs with effective n = n·m/(n+m) (asymptotic
  Kolmogorov p-value with Stephens' small-sample correction; binning only makes it conservative), plus, when
  either side has missing values, Fisher's exact test of the missing rate; the feature's p-value is the
  Bonferroni minimum of the two (a window with fewer than `min_rows` values is judged on its missing rate alone,
  test "missing_rate"). Reported: PSI, Jensen-Shannon distance, Wasserstein distance / reference std.
- **categorical** features: chi-square test of homogeneity on the 2 x k table (top-k values, "other", "missing";
  cells expected below 5 are pooled). Unseen values fall into "other" and are listed (not for PII columns).
  Reported: PSI and Jensen-Shannon distance.
- **prediction**, **label** and **performance** follow the profile's task (`crispflow.model.reference_profile`):

  - binary: prediction = the numeric test of P(positive); label = Fisher's exact test of the positive rate;
    performance = precision, recall (at the profile's threshold) and ROC AUC.
  - regression: prediction = the numeric test of the predictions (KS, PSI); label = the numeric test of the
    observed values; performance = RMSE and MAE.
  - multiclass: prediction = the numeric test of P(predicted class), and `predicted_class` = the chi-square test
    (and PSI) of the predicted-class counts; label = the chi-square test of the class counts; performance = log
    loss (of the true class) and accuracy.

  Performance metrics come with analytic 95 % CIs; each is a one-sided z-test of "the window is worse" (lower
  for precision/recall/AUC/accuracy, higher for log loss/RMSE/MAE) with both samples' standard errors.

**Decisions.** All p-values of a window (features, prediction, label, performance) are adjusted together with
Benjamini-Hochberg. A feature has drifted when its adjusted p-value is <= `alpha` AND its PSI >= `min_psi` (a
calibrated test that the change is real, and an effect-size floor so that huge windows do not flag trivial
changes). The overall verdict is "drift" when the importance-weighted share of drifted features is >=
`min_drift_share`, or the prediction or label has drifted, or a metric has degraded; "insufficient_data" when the
window has fewer than `min_rows` rows; else "no_drift". Under no drift the chance of a "drift" verdict is at most
`alpha` (BH controls the family-wise error under the global null).

Defaults (`DriftSettings`): alpha 0.01, min_psi 0.01, min_drift_share 0.1 (importance weights normalised to sum
1 over the features; equal weights by default), min_rows 30. NaN, ±inf, unseen categories, constant columns and
empty windows give explicit statuses ("insufficient_data", "no_reference_data", a note), never exceptions; a
window without a profiled feature column is bad input (`DriftInputError`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crispflow.lake import json_safe
from crispflow.model.reference_profile import (
    LOWER_IS_BETTER,
    TASK_PERFORMANCE,
    Column,
    DriftInputError,
    Frame,
    as_task_labels,
    as_task_output,
    category_counts,
    check_profile,
    class_texts,
    column_names,
    numeric_values,
    predicted_codes,
    profile_task,
    task_performance,
)
from crispflow.policies import DRIFT_MONITOR, tighten
from crispflow.stats import (
    benjamini_hochberg,
    binned,
    chi2_homogeneity,
    js_distance,
    ks_binned,
    normal_sf,
    psi,
    rate_test,
    wasserstein_binned,
)

REPORT_FORMAT = "crispflow.drift_report/1"


@dataclass(frozen=True)
class DriftSettings:
    """Decision settings; see the module docstring for what each one does."""

    alpha: float = 0.01
    min_psi: float = 0.01
    min_drift_share: float = 0.1
    min_rows: int = 30

    def __post_init__(self) -> None:
        checks = [("alpha", 0 < self.alpha < 1, "must be in (0, 1)"),
                  ("min_psi", math.isfinite(self.min_psi) and self.min_psi >= 0, "must be a finite number >= 0"),
                  ("min_drift_share", 0 < self.min_drift_share <= 1, "must be in (0, 1]"),
                  ("min_rows", self.min_rows >= 1, "must be >= 1")]
        for name, ok, rule in checks:
            if not ok:
                raise DriftInputError(f"drift settings: {name}: {getattr(self, name)!r} {rule}")

    def tightened(self, overrides: Any) -> DriftSettings:
        """These (the spec's `drift_monitor:`) settings with a run's `settings` overrides, each only in its
        `crispflow.policies.DRIFT_MONITOR` direction (detection more sensitive); ParamsError otherwise."""
        from crispflow.errors import ParamsError

        try:
            return tighten(self, overrides, DRIFT_MONITOR, field="settings")
        except DriftInputError as exc:
            raise ParamsError(str(exc)) from None

    @classmethod
    def of_spec(cls, spec: Any, overrides: Any = None) -> DriftSettings:
        """The pipeline spec's `drift_monitor:` thresholds, tightened by a run's `settings` overrides."""
        return cls(**spec.drift_monitor.model_dump()).tightened(overrides)


# ------------------------------------------------------------------------------------------------ per column


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def numeric_labels(edges: list[float]) -> list[str]:
    """Bin labels: below the reference min, [a, b) per bin, above the reference max, then missing."""
    if not edges:
        return ["values", "missing"]
    inner = [f"[{_fmt(a)}, {_fmt(b)})" for a, b in itertools.pairwise(edges)]
    return [f"< {_fmt(edges[0])}", *inner, f">= {_fmt(edges[-1])}", "missing"]


def _proportions(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * counts.size


def _numeric(feat: Mapping[str, Any], series: Column, min_rows: int) -> dict[str, Any]:
    edges = np.asarray(feat["edges"], dtype=float)
    ref = np.asarray(feat["counts"], dtype=float)
    values = numeric_values(series)
    cur, cur_means = binned(values, edges)
    cur = cur.astype(float)
    ref_means = np.array([math.nan if v is None else v for v in feat["centroids"]], dtype=float)
    out: dict[str, Any] = {"kind": "numeric", "test": "ks", "rows": int(values.size)}
    ref_missing, cur_missing = int(ref[-1]), int(cur[-1])
    p_missing = rate_test(ref_missing, int(ref.sum()), cur_missing, int(cur.sum())) \
        if ref_missing + cur_missing else None
    out["missing"] = {"reference": ref_missing / ref.sum() if ref.sum() else None,
                      "current": cur_missing / cur.sum() if cur.sum() else None, "p_value": p_missing}
    out["bins"] = {"labels": numeric_labels(feat["edges"]), "reference": _proportions(ref),
                   "current": _proportions(cur)}
    if feat.get("constant"):
        out["note"] = f"constant in the reference (value {feat.get('min')})"
    if ref[:-1].sum() == 0:
        out.update(status="no_reference_data", statistic=None, p_value=p_missing)
        return out
    if cur[:-1].sum() < min_rows:  # (almost) no values: only the missing rate can be judged
        if p_missing is not None:
            out.update(status="ok", test="missing_rate", statistic=out["missing"]["current"], p_value=p_missing,
                       psi=psi(ref, cur), js_distance=js_distance(ref, cur))
        else:
            out.update(status="insufficient_data", statistic=None, p_value=None)
        return out
    d, p_ks = ks_binned(ref[:-1], cur[:-1])
    p = p_ks if p_missing is None else min(1.0, 2 * min(p_ks, p_missing))
    std = feat.get("std") or 0.0
    w = wasserstein_binned(ref[:-1], ref_means[:-1], cur[:-1], cur_means[:-1])
    out.update(status="ok", statistic=d, p_value=p, psi=psi(ref, cur), js_distance=js_distance(ref, cur),
               wasserstein_norm=w / std if std > 0 else w)
    return out


def _categorical(feat: Mapping[str, Any], series: Column, min_rows: int) -> dict[str, Any]:
    categories = feat["categories"]
    hashed = bool(feat.get("hashed"))  # an unkeyed profile from before keyed pseudonyms
    redacted = hashed or bool(feat.get("redacted"))
    ref = np.asarray(feat["counts"], dtype=float)
    counts, unseen = category_counts(series, categories, hashed)
    cur = counts.astype(float)
    labels = [f"<redacted {i + 1}>" for i in range(len(categories))] if redacted else list(categories)
    out: dict[str, Any] = {"kind": "categorical", "test": "chi2", "rows": int(counts.sum())}
    out["missing"] = {"reference": ref[-1] / ref.sum() if ref.sum() else None,
                      "current": cur[-1] / cur.sum() if cur.sum() else None, "p_value": None}
    out["unseen"] = {"count": len(unseen), "values": ["<redacted>"] * bool(unseen) if redacted else unseen[:20]}
    out["bins"] = {"labels": [*labels, "other", "missing"], "reference": _proportions(ref),
                   "current": _proportions(cur)}
    if ref.sum() == 0:
        out.update(status="no_reference_data", statistic=None, p_value=None)
        return out
    if cur.sum() < min_rows:
        out.update(status="insufficient_data", statistic=None, p_value=None)
        return out
    stat, p, dof = chi2_homogeneity(ref, cur)
    if len(categories) == 1 and not ref[1:].any():
        out["note"] = "constant in the reference"
    out.update(status="ok", statistic=stat, dof=dof, p_value=p, psi=psi(ref, cur), js_distance=js_distance(ref, cur))
    return out


# ------------------------------------------------------------------------------------------------ the window


def _weights(features: list[str], importance: Mapping[str, float] | None) -> dict[str, float]:
    if importance is None:
        return {f: 1.0 / len(features) for f in features}
    unknown = sorted(set(importance) - set(features))
    if unknown:
        raise DriftInputError(f"importance: unknown feature(s) {unknown}")
    for name, value in importance.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise DriftInputError(f"importance: {name}: {value!r} must be a finite number >= 0")
    total = float(sum(importance.values()))
    if total <= 0:
        raise DriftInputError("importance: the weights must not all be 0")
    return {f: float(importance.get(f, 0.0)) / total for f in features}


def _performance(profile: Mapping[str, Any], task: str, output: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    ref = profile["performance"]
    cur = task_performance(task, labels, output, ref.get("threshold", 0.5))
    out: dict[str, Any] = {"threshold": ref.get("threshold"), "rows": cur["rows"], "metrics": {}}
    enough = cur["positives"] >= 1 if task == "binary" else cur["rows"] >= 2
    for name in TASK_PERFORMANCE[task]:
        r, c = ref.get(name) or {}, cur[name]
        entry = {"reference": r.get("value"), "current": c["value"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                 "p_value": None, "status": "insufficient_data"}
        if r.get("value") is not None and c["value"] is not None and c["se"] is not None and enough:
            se = math.sqrt((r.get("se") or 0.0) ** 2 + c["se"] ** 2)
            worse_by = c["value"] - r["value"] if name in LOWER_IS_BETTER else r["value"] - c["value"]
            p = normal_sf(worse_by / se) if se > 0 else float(worse_by <= 0)
            entry.update(p_value=p, status="ok")
        out["metrics"][name] = entry
    return out


def _label(profile: Mapping[str, Any], task: str, labels: np.ndarray, min_rows: int) -> dict[str, Any]:
    """The label test of the window (see the module docstring)."""
    ref, rows = profile["label"], int(labels.size)
    if task == "binary":
        return {"reference_rate": ref["positives"] / ref["rows"] if ref["rows"] else None,
                "current_rate": float(labels.mean()), "rows": rows,
                "p_value": rate_test(ref["positives"], ref["rows"], int(labels.sum()), rows), "status": "ok"}
    if task == "regression":
        return _numeric(ref, labels, min_rows)
    return _categorical(ref, class_texts(labels, profile["classes"]), min_rows)


def label_reason(label: Mapping[str, Any], suffix: str = "") -> str:
    """The verdict's reason for a drifted label (any task)."""
    if "reference_rate" in label:
        return f"label rate {label['reference_rate']:.3f} -> {label['current_rate']:.3f}{suffix}"
    return (f"label distribution drift ({label.get('test')} {label['statistic']:.3f}, PSI "
            f"{label.get('psi', 0.0):.3f}){suffix}")


def performance_reason(name: str, metric: Mapping[str, Any]) -> str:
    return f"{name} degraded: {metric['reference']:.3f} -> {metric['current']:.3f}"


def _empty_report(profile: Mapping[str, Any], rows: int, settings: DriftSettings) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT, "status": "insufficient_data", "drift": False, "rows": rows,
        "reference_rows": profile["rows"], "settings": asdict(settings), "drift_share": 0.0,
        "drifted_features": [], "reasons": [f"the window has {rows} rows, fewer than min_rows={settings.min_rows}"],
        "features": {name: {"kind": feat["kind"], "status": "insufficient_data", "drifted": False, "rows": rows}
                     for name, feat in profile["features"].items()},
        "prediction": None, "label": None, "performance": None, "task": profile_task(profile),
        **({"predicted_class": None} if profile_task(profile) == "multiclass" else {}),
    }


def compute_drift(
    profile: Mapping[str, Any],
    window: Frame,
    *,
    scores: Any = None,
    labels: Any = None,
    importance: Mapping[str, float] | None = None,
    settings: DriftSettings | None = None,
) -> dict[str, Any]:
    """The JSON-safe drift report of `window` against `profile` (see the module docstring for every field).

    :param scores: the model's output for the window's rows in the profile's task convention (binary P(positive),
        regression the predictions, multiclass (n, k) probabilities; a NaN row = no output): prediction and
        performance drift, optional.
    :param labels: the task's labels for the window's rows (binary boolean or 0/1, regression values, multiclass
        class codes): label and performance drift, optional.
    :param importance: feature -> weight >= 0 for the verdict; features not named weigh 0; default equal.
    """
    settings = settings or DriftSettings()
    profile = check_profile(profile)
    task = profile_task(profile)
    names = list(profile["features"])
    weights = _weights(names, importance)
    rows = len(window)
    if rows < settings.min_rows:
        return _empty_report(profile, rows, settings)
    columns = set(column_names(window))
    absent = [c for c in names if c not in columns]
    if absent:
        raise DriftInputError(f"current data: missing feature column(s) {absent}")
    features: dict[str, dict[str, Any]] = {}
    for name in names:
        feat = profile["features"][name]
        check = _numeric if feat["kind"] == "numeric" else _categorical
        features[name] = check(feat, window[name], settings.min_rows) | {"weight": weights[name]}
    tests: list[tuple[str, dict[str, Any]]] = [(n, r) for n, r in features.items() if r["p_value"] is not None]

    k = len(profile.get("classes") or [])
    prediction = predicted = label = performance = None
    output = as_task_output(task, scores, rows, k) if scores is not None else None
    label_arr = as_task_labels(task, labels, rows, k) if labels is not None else None
    if output is not None and profile.get("prediction"):
        score = output if task != "multiclass" else np.max(output, axis=1)
        prediction = _numeric(profile["prediction"], score, settings.min_rows)
        if prediction["p_value"] is not None:
            tests.append(("prediction", prediction))
    if output is not None and profile.get("predicted_class"):
        codes = predicted_codes(output)
        predicted = _categorical(profile["predicted_class"], class_texts(codes, profile["classes"]), settings.min_rows)
        if predicted["p_value"] is not None:
            tests.append(("predicted_class", predicted))
    if label_arr is not None and profile.get("label"):
        label = _label(profile, task, label_arr, settings.min_rows)
        if label["p_value"] is not None:
            tests.append(("label", label))
    if output is not None and label_arr is not None and profile.get("performance"):
        performance = _performance(profile, task, output, label_arr)
        tests += [(f"performance.{n}", m) for n, m in performance["metrics"].items() if m["p_value"] is not None]

    adjusted = benjamini_hochberg([t["p_value"] for _, t in tests]) if tests else []
    for (_, result), p_adj in zip(tests, adjusted, strict=True):
        result["p_adjusted"] = p_adj
        result["threshold"] = settings.alpha
        significant = p_adj <= settings.alpha
        result["drifted"] = bool(significant and result.get("psi", math.inf) >= settings.min_psi)
    reasons: list[str] = []
    for result in [*features.values(), *(x for x in (prediction, predicted, label) if x)]:
        result.setdefault("drifted", False)
        result.setdefault("p_adjusted", None)
    if performance:
        for metric in performance["metrics"].values():
            metric["degraded"] = bool(metric.pop("drifted", False))
            metric.setdefault("p_adjusted", None)

    drifted = [n for n, r in features.items() if r["drifted"]]
    share = float(sum(weights[n] for n in drifted))
    if drifted and share >= settings.min_drift_share:
        reasons.append(f"{len(drifted)} feature(s) drifted (weighted share {share:.3f} >= "
                       f"{settings.min_drift_share}): {', '.join(drifted)}")
    elif drifted:
        reasons.append(f"{len(drifted)} feature(s) drifted but their weighted share {share:.3f} is below "
                       f"min_drift_share {settings.min_drift_share}: {', '.join(drifted)}")
    alarm = bool(drifted) and share >= settings.min_drift_share
    if prediction and prediction["drifted"]:
        reasons.append(f"prediction drift (KS {prediction['statistic']:.3f}, p_adj {prediction['p_adjusted']:.2g})")
        alarm = True
    if predicted and predicted["drifted"]:
        reasons.append(f"predicted-class drift (chi2 {predicted['statistic']:.1f}, PSI {predicted['psi']:.3f}, "
                       f"p_adj {predicted['p_adjusted']:.2g})")
        alarm = True
    if label and label["drifted"]:
        reasons.append(label_reason(label))
        alarm = True
    for name, metric in (performance or {}).get("metrics", {}).items():
        if metric["degraded"]:
            reasons.append(performance_reason(name, metric))
            alarm = True
    tested = [r for r in features.values() if r["status"] == "ok"]
    status = "drift" if alarm else ("no_drift" if tested or prediction else "insufficient_data")
    report = {
        "format": REPORT_FORMAT, "status": status, "drift": alarm, "rows": rows, "reference_rows": profile["rows"],
        "settings": asdict(settings), "drift_share": share, "drifted_features": drifted, "reasons": reasons,
        "features": features, "prediction": prediction, "label": label, "performance": performance, "task": task,
    }
    if task == "multiclass":
        report["predicted_class"] = predicted
    return json_safe(report)
