"""Honest evaluation on a frozen holdout: metrics with bootstrap CIs, per-slice metrics, latency and curves.

Pure numpy/pandas/sklearn/matplotlib: this module never imports Airflow or MLflow. The statistics (ranking
kernel, stratified resampling, percentile intervals, label checks) are `crispflow.stats`'s. Conventions:

- `y_true` is boolean (True = the positive class), `score` the model's probability of the positive class, and a
  row is predicted positive when `score >= threshold`.
- A metric that is undefined on the data is NaN, never an exception: precision with no predicted positive,
  recall and average precision with no positive, f1 when there is neither a positive nor a predicted positive,
  roc_auc with one class only, and every score-based metric when a score is not finite.
- The bootstrap is **stratified**: each resample draws the positives and the negatives separately, with
  replacement, keeping the holdout's class counts. Every resample then has both classes (roc_auc is always
  defined) and the intervals describe the model on a holdout of this size and prevalence. Intervals are
  percentile intervals of the resamples where the metric is defined.
- Resamples are multiplicity counts (a `B x n` matrix) and every metric is computed for all of them at once:
  confusion counts and Brier by one matrix product, roc_auc (Mann-Whitney, ties count 1/2) and average
  precision (sklearn's step-wise definition) by segment sums over the rows sorted once by score. The counts are
  drawn in blocks of ~1M cells, so memory stays flat whatever the number of resamples.
- Results are JSON-serialisable: Python floats and ints; NaN appears only for undefined metrics as above.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from crispflow.stats import as_inputs, as_labels, percentile_interval, ranking_metrics, ratio, resample_counts

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
MISSING = "<missing>"


def _check_metrics(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in HIGHER_IS_BETTER]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")


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


def _slice_report(
    y: np.ndarray, s: np.ndarray, threshold: float, rows: np.ndarray, min_rows: int, boot: dict[str, Any]
) -> dict[str, Any]:
    report: dict[str, Any] = {"n": int(rows.size), "positives": int(y[rows].sum())}
    if rows.size < min_rows:
        report["skipped"] = f"fewer than {min_rows} rows"
    else:
        report["metrics"] = bootstrap_ci(y[rows], s[rows], threshold, **boot)
    return report


def evaluate(
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


def plot_curves(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, bytes]:
    """PNG bytes of the ROC, PR, calibration and confusion-matrix plots.

    Figures are built with the object-oriented API on the Agg canvas (no pyplot, no global backend switch, no
    figure registry), so nothing is left open and it is safe in worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, s = as_inputs(y_true, score)
    pred = s >= threshold
    finite = np.isfinite(s)
    y_f, s_f, pred_f = y[finite], s[finite], pred[finite]
    out = {}
    for name, draw, height in (
        ("roc.png", lambda f: _plot_roc(f.subplots(), y_f, s_f, pred_f), 5),
        ("pr.png", lambda f: _plot_pr(f.subplots(), y_f, s_f, pred_f), 5),
        ("calibration.png", lambda f: _plot_calibration(f.subplots(2, 1, sharex=True), y_f, s_f), 8),
        ("confusion_matrix.png", lambda f: _plot_confusion(f.subplots(), y, pred, threshold), 5),
    ):
        fig = Figure(figsize=(6, height), layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        out[name] = _png(fig)
        fig.clear()
    return out
