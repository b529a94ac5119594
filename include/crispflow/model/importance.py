"""Global explanations of a fitted model on the frozen holdout: permutation importance with paired-bootstrap CIs,
partial dependence (with ICE lines) thumbnails, mean |contribution| with a bootstrap CI, and drift weights.

Everything is at the level of the spec's feature columns (`spec.feature_columns`): a feature is permuted as its
raw column in the frame, so the one-hot columns of a category (and the parts of a datetime) move together. Model
outputs follow `crispflow.model.tasks` (binary P(positive), multiclass (n, k) probabilities in `spec.class_labels`
order, regression the prediction); every metric is `crispflow.model.evaluation.task_weighted`'s (the kernel
evaluation and blessing use), and the bootstrap is the evaluation's (`task_resample_counts`: stratified by class
for classification, plain rows for regression). Pure numpy/pandas/scikit-learn/matplotlib: never Airflow or
MLflow; results are JSON-able (NaN only where a metric is undefined, as in the evaluation).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crispflow.errors import CrispflowError
from crispflow.model.evaluation import (
    THRESHOLD_METRICS,
    higher_is_better,
    task_inputs,
    task_resample_counts,
    task_weighted,
)
from crispflow.model.features import column_groups
from crispflow.model.features import features as spec_features
from crispflow.model.tasks import labels, model_output, per_row_loss
from crispflow.native_threads import thread_limit
from crispflow.stats import percentile_interval, plain_resample_counts, ratio

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec

SQUARED_ERROR = "squared_error"  # regression's per-row loss (mean squared error); not a blessing metric
CORRELATED_RHO = 0.7  # |Spearman rho| from which two numeric features are noted as sharing importance
DRIFT_WEIGHT_FLOOR = 0.25  # the share of the drift weights spread equally over every feature
PDP_GRID = 20  # grid points of a numeric partial dependence (quantiles 5 %..95 %, or the distinct values)
PDP_ROWS = 1000  # rows the partial dependence averages over (a seeded sample of larger frames)
MAX_CATEGORIES = 12  # most frequent categories shown in a categorical partial dependence
THUMBNAIL = (4.0, 3.0)  # inches
THUMBNAIL_DPI = 80
# Seed sequences: the bootstrap and the PDP sample draw from `seed` alone, feature j's permutations from
# [seed, PERMUTATION_STREAM, j]. SeedSequence ignores trailing zeros ([seed, 0] is [seed]), so the constant must be
# non-zero: [seed, 2, 0] = [seed, 2] is still no other stream's.
PERMUTATION_STREAM = 2


class ImportanceError(CrispflowError):
    """Bad input to a global explanation (names the argument and the rule)."""


# ------------------------------------------------------------------------------------------------- metrics


def _loss_name(task: str) -> str:
    return SQUARED_ERROR if task == "regression" else "log_loss"


def metric_names(spec: PipelineSpec) -> list[str]:
    """The metrics importance is measured with: the primary metric, then the task's loss (log loss; regression
    squared error) unless it is the primary metric."""
    primary, loss = spec.blessing.primary_metric, _loss_name(spec.task)
    return [primary] if primary == loss else [primary, loss]


def _higher(metric: str) -> bool:
    return metric != SQUARED_ERROR and higher_is_better(metric)


def _values(task: str, names: Sequence[str], counts: np.ndarray, y: np.ndarray, output: np.ndarray,
            threshold: float | None) -> dict[str, np.ndarray]:
    """Each metric on each row of `counts` (B x n multiplicities), by the evaluation's kernel."""
    return task_weighted(task, counts, y, output, names, threshold) if names else {}


def _drops(task: str, names: Sequence[str], y: np.ndarray, original: Mapping[str, np.ndarray],
           permuted: np.ndarray, counts: np.ndarray, threshold: float | None) -> dict[str, np.ndarray]:
    """Per metric and row of `counts`: the metric's drop from `original` (its values on the unpermuted output;
    positive = the feature helps) averaged over the repeats (`permuted` is repeats x n [x k])."""
    total = {m: np.zeros(counts.shape[0]) for m in names}
    for output in permuted:
        after = _values(task, names, counts, y, output, threshold)
        for m in names:
            total[m] += (original[m] - after[m]) if _higher(m) else (after[m] - original[m])
    return {m: total[m] / len(permuted) for m in names}


def _loss_increase(task: str, y: np.ndarray, base: np.ndarray, permuted: Mapping[str, np.ndarray]) -> np.ndarray:
    """n x features: each row's loss (`tasks.per_row_loss`, whose weighted mean is the evaluation's log loss)
    averaged over the repeats, minus its loss on the unpermuted output. The task's loss is a mean of per-row
    losses, so its drop on a resample is the resample's mean of these paired differences (one matrix product for
    every feature and repeat)."""
    before = per_row_loss(task, y, base)
    return np.column_stack([np.mean([per_row_loss(task, y, o) for o in out], axis=0) - before
                            for out in permuted.values()])


def _importances(task: str, names: Sequence[str], y: np.ndarray, base: np.ndarray,
                 permuted: Mapping[str, np.ndarray], threshold: float | None, n_boot: int, seed: int
                 ) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """(baseline metric values, feature -> metric -> importance, feature -> metric -> bootstrap importances)."""
    loss = _loss_name(task) if _loss_name(task) in names else None
    direct = [m for m in names if m != loss]
    ones = np.ones((1, y.shape[0]))
    baseline = {m: float(v[0]) for m, v in _values(task, direct, ones, y, base, threshold).items()}
    point = {f: {m: float(v[0]) for m, v in _drops(task, direct, y, baseline, out, ones, threshold).items()}
             for f, out in permuted.items()}
    parts: dict[str, dict[str, list[np.ndarray]]] = {f: {m: [] for m in names} for f in permuted}
    increase = _loss_increase(task, y, base, permuted) if loss else None
    if loss:
        baseline[loss] = float(np.mean(per_row_loss(task, y, base)))
        for j, f in enumerate(permuted):
            point[f][loss] = float(np.mean(increase[:, j]))
    for counts in task_resample_counts(task, y, n_boot, seed):  # the same resamples for every output: paired
        if direct:
            original = _values(task, direct, counts, y, base, threshold)
            for f, out in permuted.items():
                for m, drop in _drops(task, direct, y, original, out, counts, threshold).items():
                    parts[f][m].append(drop)
        if loss:
            means = ratio(counts @ increase, counts.sum(axis=1)[:, None])
            for j, f in enumerate(permuted):
                parts[f][loss].append(means[:, j])
    boots = {f: {m: np.concatenate(v) if v else np.full(n_boot, np.nan) for m, v in ms.items()}
             for f, ms in parts.items()}
    return baseline, point, boots


# -------------------------------------------------------------------------------------- permutation importance


def _check(repeats: int, alpha: float, n_boot: int, rows: int) -> None:
    if not isinstance(repeats, int) or repeats < 1:
        raise ImportanceError(f"repeats: must be an integer >= 1, got {repeats!r}")
    if not 0 < alpha < 1:
        raise ImportanceError(f"alpha: must be in (0, 1), got {alpha!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ImportanceError(f"n_boot: must be an integer >= 1, got {n_boot!r}")
    if rows < 2:
        raise ImportanceError(f"holdout: needs at least 2 rows to permute, got {rows}")


def permutation_rng(seed: int, j: int) -> np.random.Generator:
    """The generator of feature j's permutations: its own stream, never the bootstrap's (`seed` alone)."""
    return np.random.default_rng([seed, PERMUTATION_STREAM, j])


def _permuted_outputs(spec: PipelineSpec, model: Any, X: pd.DataFrame, repeats: int, seed: int
                      ) -> dict[str, np.ndarray]:
    """feature -> the model's outputs with that raw column permuted among the rows, repeats x n [x k]; all
    repeats of a feature are scored in one call on a concatenated frame. Feature j's permutations come from
    `permutation_rng(seed, j)`, so they depend neither on the other features nor share the bootstrap's stream."""
    n = len(X)
    tiled = X.iloc[np.tile(np.arange(n), repeats)].reset_index(drop=True)
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(X.columns):
        rng = permutation_rng(seed, j)
        rows = np.concatenate([rng.permutation(n) for _ in range(repeats)])
        frame = tiled.copy(deep=False)  # copy-on-write: only the permuted column is new
        frame[name] = X[name].iloc[rows].reset_index(drop=True)
        output = model_output(spec, model, frame)
        out[name] = output.reshape(repeats, n, *output.shape[1:])
    return out


def correlated_features(spec: PipelineSpec, X: pd.DataFrame, min_rho: float = CORRELATED_RHO
                        ) -> list[dict[str, Any]]:
    """Pairs of numeric features with |Spearman rho| >= `min_rho` (pairwise complete rows), strongest first."""
    numeric = [c for c in column_groups(spec)["numeric"] if c in X.columns]
    if len(numeric) < 2:
        return []
    values = pd.DataFrame({c: pd.to_numeric(X[c], errors="coerce").astype("float64") for c in numeric})
    rho = values.corr(method="spearman", min_periods=3).to_numpy()
    pairs = [
        {"features": [numeric[i], numeric[j]], "spearman": float(rho[i, j])}
        for i in range(len(numeric)) for j in range(i + 1, len(numeric))
        if np.isfinite(rho[i, j]) and abs(rho[i, j]) >= min_rho
    ]
    return sorted(pairs, key=lambda p: -abs(p["spearman"]))


def _notes(names: Sequence[str], repeats: int, alpha: float, n_boot: int, task: str,
           correlated: list[dict[str, Any]]) -> list[str]:
    stratified = "stratified by class, " if task != "regression" else ""
    losses = [m for m in names if not _higher(m)]
    rises = f" ({' and '.join(losses)}: the loss rises)" if losses else ""
    notes = [
        f"Importance = drop in each metric when the feature's raw column is permuted among the holdout rows "
        f"(one-hot columns of a category move together), averaged over {repeats} repeats; positive = the model "
        f"relies on the feature{rises}. It measures what this model uses, not what causes the outcome.",
        f"CI: {1 - alpha:.0%} percentile interval of a paired bootstrap over holdout rows ({n_boot} resamples, "
        f"{stratified}the same resamples for the original and permuted outputs, averaged over the repeats inside "
        f"each resample): it reflects row sampling. For a mean loss it is the CI of the mean paired difference.",
    ]
    if SQUARED_ERROR in names:
        notes.append("squared_error is the mean squared error of the predictions.")
    if correlated:
        pairs = ", ".join(f"{a} ~ {b} (rho {p['spearman']:+.2f})" for p in correlated for a, b in [p["features"]])
        notes.append(f"Correlated features share importance: permuting one leaves its information in the other, so "
                     f"both look less important than they are together: {pairs}.")
    return notes


def _sort_key(entry: dict[str, Any], primary: str) -> tuple[float, str]:
    value = entry[primary]["importance"]
    return (-value if np.isfinite(value) else np.inf, entry["feature"])


def permutation_importance(spec: PipelineSpec, model: Any, holdout: pd.DataFrame, *, repeats: int = 10,
                           alpha: float = 0.05, n_boot: int = 1000, seed: int = 0,
                           threshold: float | None = None) -> dict[str, Any]:
    """Permutation importance of each spec feature column on `holdout`, per metric (`metric_names`), with CIs.

    Returns {"metrics": [primary, loss], "primary_metric", "repeats", "alpha", "n_boot", "seed", "rows",
    "baseline": {metric: value on the unpermuted holdout}, "features": [{"feature", "type", <metric>:
    {"importance", "low", "high"}, ...}] sorted by the primary metric's importance (desc; NaN last),
    "correlated": [{"features": [a, b], "spearman": rho}] for |rho| >= 0.7 among numeric features, "notes"}.
    `threshold` is the binary decision threshold, needed only when the primary metric is precision, recall or f1.
    """
    _check(repeats, alpha, n_boot, len(holdout))
    task, names = spec.task, metric_names(spec)
    if task == "binary" and names[0] in THRESHOLD_METRICS and threshold is None:
        raise ImportanceError(f"threshold: the primary metric {names[0]!r} needs the binary decision threshold")
    X = spec_features(spec, holdout)
    with thread_limit("CRISPFLOW_TRAIN_THREADS"):  # native pools oversubscribe a shared worker (native_threads)
        y, base = task_inputs(task, labels(spec, holdout), model_output(spec, model, X))
        permuted = _permuted_outputs(spec, model, X, repeats, seed)
        baseline, point, boots = _importances(task, names, y, base, permuted, threshold, n_boot, seed)
    types = {c.name: c.type for c in spec.columns}
    rows = []
    for f in permuted:
        entry: dict[str, Any] = {"feature": f, "type": types[f]}
        for m in names:
            low, high = percentile_interval(boots[f][m], alpha)
            entry[m] = {"importance": point[f][m], "low": low, "high": high}
        rows.append(entry)
    correlated = correlated_features(spec, X)
    return {
        "metrics": names,
        "primary_metric": names[0],
        "repeats": repeats,
        "alpha": float(alpha),
        "n_boot": n_boot,
        "seed": seed,
        "rows": len(y),
        "baseline": {m: baseline[m] for m in names},
        "features": sorted(rows, key=lambda e: _sort_key(e, names[0])),
        "correlated": correlated,
        "notes": _notes(names, repeats, alpha, n_boot, task, correlated),
    }


# -------------------------------------------------------------------------------------- mean |contribution|


def mean_abs_contributions(contributions: np.ndarray, features: Sequence[str], *, n_boot: int = 1000,
                           alpha: float = 0.05, seed: int = 0) -> list[dict[str, Any]]:
    """Mean |contribution| per feature over the rows of `contributions` (n x len(features)), with a (1 - alpha)
    percentile CI from a plain bootstrap over rows; [{"feature", "mean_abs", "low", "high"}] sorted desc."""
    c = np.asarray(contributions, dtype="float64")
    if c.ndim != 2 or c.shape[1] != len(features):
        raise ImportanceError(f"contributions: must be an (n, {len(features)}) array (one column per feature), "
                              f"got shape {c.shape}")
    if not c.shape[0] or not np.isfinite(c).all():
        raise ImportanceError(f"contributions: needs at least one row and finite values, got {c.shape[0]} rows")
    _check(1, alpha, n_boot, 2)
    magnitude = np.abs(c)
    boots = np.concatenate([ratio(counts @ magnitude, counts.sum(axis=1)[:, None])
                            for counts in plain_resample_counts(c.shape[0], n_boot, seed)])
    out = []
    for j, name in enumerate(features):
        low, high = percentile_interval(boots[:, j], alpha)
        out.append({"feature": str(name), "mean_abs": float(magnitude[:, j].mean()), "low": low, "high": high})
    return sorted(out, key=lambda e: (-e["mean_abs"], e["feature"]))


# ------------------------------------------------------------------------------------------------ drift weights


def drift_weights(importance: Mapping[str, Any], features: Sequence[str] | None = None, *,
                  floor: float = DRIFT_WEIGHT_FLOOR) -> dict[str, float]:
    """Feature -> weight >= 0 for the drift monitor, summing to 1, from `permutation_importance`'s output: the
    primary metric's importance clipped at 0 (NaN counts as 0) and normalised, blended with equal weights by
    `floor` (weight = (1 - floor) * importance share + floor / n), so a shift in a feature this model ignores still
    counts a little (the next model may not ignore it). If every importance is 0, equal weights. `features`
    restricts the weights to those the monitor profiles (its profile skips datetime features; the monitor rejects
    unknown names); a feature absent from `importance` gets the floor only."""
    if not 0 <= floor <= 1:
        raise ImportanceError(f"floor: {floor!r} must be in [0, 1]")
    primary = importance.get("primary_metric") or importance["metrics"][0]
    measured = {e["feature"]: e[primary]["importance"] for e in importance["features"]}
    names = list(features) if features is not None else list(measured)
    if not names:
        raise ImportanceError("features: no feature to weigh")
    raw = {f: float(measured.get(f, 0.0)) for f in names}
    clipped = {f: v if np.isfinite(v) and v > 0 else 0.0 for f, v in raw.items()}
    total = sum(clipped.values())
    if total <= 0:
        return {f: 1.0 / len(names) for f in names}
    return {f: (1 - floor) * v / total + floor / len(names) for f, v in clipped.items()}


# ------------------------------------------------------------------------------------------- partial dependence


def _grid(kind: str, series: pd.Series) -> np.ndarray | None:
    """The values a feature is set to: numeric quantiles 5 %..95 % (or the distinct values when few), datetime
    likewise, categories by frequency (most frequent MAX_CATEGORIES); None without a usable value."""
    if kind == "text":
        counts = series.dropna().value_counts()
        return np.asarray(counts.index[:MAX_CATEGORIES], dtype=object) if len(counts) else None
    if kind == "datetime":
        from crispflow.data.extracts import to_utc_naive

        when = to_utc_naive(series).dropna()
        if when.empty:
            return None
        ns = when.to_numpy(dtype="datetime64[ns]").astype("int64")
        return np.unique(_quantiles(ns.astype("float64")).astype("int64")).astype("datetime64[ns]")
    values = pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    values = values[np.isfinite(values)]
    return _quantiles(values) if values.size else None


def _quantiles(values: np.ndarray) -> np.ndarray:
    distinct = np.unique(values)
    if distinct.size <= PDP_GRID:
        return distinct
    return np.unique(np.quantile(values, np.linspace(0.05, 0.95, PDP_GRID)))


def _class_of_interest(spec: PipelineSpec, model: Any, frame: pd.DataFrame, X: pd.DataFrame) -> int:
    """Multiclass: the most frequent class of `frame`'s labels (or, without labels, of the predicted class)."""
    k = len(spec.class_labels)
    if spec.target.column in frame.columns:
        return int(np.argmax(np.bincount(labels(spec, frame), minlength=k)))
    return int(np.argmax(np.bincount(np.argmax(model_output(spec, model, X), axis=1), minlength=k)))


def _curves(spec: PipelineSpec, model: Any, sample: pd.DataFrame, name: str, grid: np.ndarray, column: int | None
            ) -> np.ndarray:
    """The output with `name` set to each grid value for every sample row: grid x rows (one scoring call)."""
    m = len(sample)
    big = sample.iloc[np.tile(np.arange(m), grid.size)].reset_index(drop=True)
    big[name] = pd.Series(np.repeat(grid, m), dtype=object if grid.dtype == object else None)
    out = model_output(spec, model, big)
    if column is not None:
        out = out[:, column]
    return out.reshape(grid.size, m)


def _png(draw: Any) -> bytes:
    """Draw on a fresh Agg figure (object API, no pyplot: no figure registry, nothing left open) -> PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=THUMBNAIL, dpi=THUMBNAIL_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig.subplots())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=THUMBNAIL_DPI)
    fig.clear()
    return buffer.getvalue()


def _draw(ax: Any, kind: str, grid: np.ndarray, curves: np.ndarray, ice: np.ndarray, series: pd.Series) -> None:
    average = curves.mean(axis=1)
    if kind == "text":
        x = np.arange(grid.size)
        jitter = np.linspace(-0.2, 0.2, max(ice.size, 1))
        for i, row in enumerate(ice):
            ax.scatter(x + jitter[i], curves[:, row], s=4, color="grey", alpha=0.4, linewidths=0)
        ax.plot(x, average, "o", color="C0", markersize=6, label="average (PD)")
        ax.set_xticks(x)
        ax.set_xlim(-0.6, grid.size - 0.4)
        ax.set_xticklabels([str(v) for v in grid], rotation=45 if grid.size > 4 else 0, ha="right", fontsize=7)
        return
    xs = pd.to_datetime(grid) if kind == "datetime" else grid
    ax.plot(xs, curves[:, ice], color="grey", alpha=0.3, linewidth=0.6)
    ax.plot(xs, average, color="C0", linewidth=2.0, label="average (PD)")
    if kind == "datetime":
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        locator = AutoDateLocator(minticks=3, maxticks=7)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if kind == "numeric":
        values = pd.to_numeric(series, errors="coerce").astype("float64").dropna().to_numpy()
        if values.size:
            deciles = np.quantile(values, np.linspace(0.1, 0.9, 9))
            ax.plot(deciles, np.zeros_like(deciles), "|", color="black", markersize=8,
                    transform=ax.get_xaxis_transform())
    ax.tick_params(labelsize=7)


def _output_label(spec: PipelineSpec, column: int | None) -> tuple[str, str]:
    """(y axis label, title suffix) in the task's output convention."""
    if spec.task == "binary":
        return f"P({spec.target.column} = {spec.target.positive})", ""
    if spec.task == "multiclass":
        return f"P({spec.class_labels[column]})", f"P({spec.class_labels[column]}), the most frequent class"
    return "prediction", ""


def partial_dependence_plots(spec: PipelineSpec, model: Any, frame: pd.DataFrame, features: Sequence[str], *,
                             ice_rows: int = 50, seed: int = 0) -> dict[str, bytes]:
    """PNG thumbnails (4 x 3 in, 80 dpi) of each feature's partial dependence (the average output over up to
    PDP_ROWS rows of `frame` with the feature set to each grid value) and ICE lines of `ice_rows` of those rows.

    Outputs follow the task: binary P(positive); multiclass the probability of one class, the most frequent in
    `frame`'s labels (or predictions), named in the title; regression the prediction. Numeric and datetime
    features get lines over a quantile grid (with decile ticks), categorical ones points per category (the
    MAX_CATEGORIES most frequent). A feature without any non-missing value is skipped (absent from the result).
    """
    unknown = [f for f in features if f not in spec.feature_columns]
    if unknown:
        raise ImportanceError(f"features: {unknown} are not feature columns of the spec")
    if not isinstance(ice_rows, int) or ice_rows < 0:
        raise ImportanceError(f"ice_rows: must be an integer >= 0, got {ice_rows!r}")
    X = spec_features(spec, frame)
    if X.empty:
        raise ImportanceError("frame: has no rows")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(X), size=min(len(X), PDP_ROWS), replace=False))
    sample = X.iloc[picked].reset_index(drop=True)
    ice = rng.choice(len(sample), size=min(len(sample), ice_rows), replace=False)
    column = _class_of_interest(spec, model, frame, X) if spec.task == "multiclass" else None
    ylabel, suffix = _output_label(spec, column)
    groups = column_groups(spec)
    kinds = {c: kind for kind in ("numeric", "text", "datetime") for c in groups[kind]}
    out: dict[str, bytes] = {}
    for name in features:
        kind = kinds[name]
        grid = _grid(kind, X[name])
        if grid is None:
            continue
        with thread_limit("CRISPFLOW_TRAIN_THREADS"):
            curves = _curves(spec, model, sample, name, grid, column)

        def draw(ax: Any, kind: str = kind, grid: np.ndarray = grid, curves: np.ndarray = curves,
                 name: str = name) -> None:
            _draw(ax, kind, grid, curves, ice, X[name])
            ax.set_title(f"{name}: {suffix}" if suffix else name, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)

        out[name] = _png(draw)
    return out
