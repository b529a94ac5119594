"""The reference profile of a model version: what its training data looked like, binned once, as JSON.

`build_profile(spec, frame, scores, labels)` is computed at training time (and logged to MLflow with the model);
`compute_drift` (crispflow.monitoring.drift) later bins every window against it. Per feature:

- **numeric** (spec types int/float, or numeric dtypes without a spec): edges = the reference minimum, the
  interior quantiles (``bins`` equal-frequency bins; ties collapse, so a 0/1 column gets 2 bins) and just above
  the maximum. A value's bin is ``searchsorted(edges, x, side="right")``: bin 0 is "below the reference minimum",
  the last value bin "above the reference maximum" (both empty in the reference, so out-of-range values show up
  as drift), ±inf fall into those outer bins, NaN gets its own last bin. Stored with each bin's count and the mean
  of its finite values (for the Wasserstein distance), plus mean/std/min/max of the finite values. The binning
  and the standard errors below are `crispflow.stats`'s (quantile_edges, binned, hanley_mcneil_se).
- **categorical** (spec types category/string/bool, other dtypes without a spec): the ``top_k`` most frequent
  values as text (ties by name) and their counts, then "other" (every remaining value; unseen values land here in a
  window) and "missing". A personal-data column is profiled in its stored form (keyed ``hk1:`` pseudonyms for
  ``pii: hmac``: crispflow.governance.stored_form) and marked ``redacted``, so reports never print its values.
  Profiles written before keyed pseudonyms hold unkeyed ``sha256:<16 hex>`` pseudonyms (``hashed``); a window is
  still hashed the same way to compare with them.
- **prediction**, **label** and **performance** follow the task (`spec.task`, recorded as the profile's `task`;
  a profile without one is binary). `scores` is the model's output in `crispflow.model.tasks` convention and
  `labels` the task's labels (`tasks.labels`):

  - binary: prediction = numeric profile of P(positive); label = rows and positives; performance = precision,
    recall (at `threshold`, default 0.5) and ROC AUC.
  - regression: prediction = numeric profile of the predictions; label = numeric profile of the observed values;
    performance = RMSE and MAE.
  - multiclass: prediction = numeric profile of P(predicted class), plus `predicted_class` = the predicted-class
    counts (categorical, one category per class in model order, listed in `classes`); label = the class counts
    (same categories); performance = log loss and accuracy.

  Every performance metric carries its analytic standard error (binomial for precision, recall and accuracy,
  Hanley-McNeil for ROC AUC, the standard error of the mean per-row loss for log loss and MAE, its delta-method
  transform for RMSE), so a window's metrics can be compared with both samples' noise accounted for.
  Pass out-of-fold or holdout scores here: in-sample scores make the reference look better than it is.

A frame is a pandas DataFrame or a pyarrow Table (the drift CLI reads files with pyarrow, so it never imports
pandas): numeric, boolean and string Arrow columns are handled natively, any other Arrow column through pandas,
with the same result either way. Datetime columns are skipped. Everything is JSON-safe (NaN → null) and
deterministic: the same data gives the same profile byte for byte (`save_profile` writes sorted keys, atomically).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crispflow.errors import CrispflowError
from crispflow.lake import write_atomic
from crispflow.stats import binned, finite_span, hanley_mcneil_se, quantile_edges

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.spec import PipelineSpec

Frame = Any  # a pandas DataFrame or a pyarrow Table
Column = Any  # a pandas Series, a pyarrow (Chunked)Array or a numpy array

FORMAT = "crispflow.drift_profile/1"
DEFAULT_BINS = 20
DEFAULT_TOP_K = 20
PERFORMANCE_METRICS = ("precision", "recall", "roc_auc")  # binary
TASK_PERFORMANCE: dict[str, tuple[str, ...]] = {
    "binary": PERFORMANCE_METRICS, "multiclass": ("log_loss", "accuracy"), "regression": ("rmse", "mae")}
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
TASKS = tuple(TASK_PERFORMANCE)
PREDICTION = "__prediction__"
CATEGORICAL_ARROW = ("int", "bool", "text")  # Arrow types whose values are counted natively


class DriftInputError(CrispflowError):
    """Bad input to profiling or drift computation; the message names the column, file or field and the rule."""


# ------------------------------------------------------------------------------------------------- values


def is_arrow(data: Any) -> bool:
    """True for a pyarrow Table or (Chunked)Array (told by its module, so pyarrow is never imported for it)."""
    return type(data).__module__.split(".")[0] == "pyarrow"


def column_names(frame: Frame) -> list[Any]:
    """The column names of a DataFrame or an Arrow Table."""
    return list(frame.column_names if is_arrow(frame) else frame.columns)


def _arrow_kind(column: Any) -> str | None:
    """"float", "int", "bool" or "text" for the Arrow types handled natively (text: also dictionary-encoded, as
    Parquet strings read with `read_dictionary`); None for any other (pandas does)."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):
        return "text" if pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type) else None
    for name, test in (("float", pa.types.is_floating), ("int", pa.types.is_integer), ("bool", pa.types.is_boolean),
                       ("text", pa.types.is_string), ("text", pa.types.is_large_string)):
        if test(kind):
            return name
    return None


def _native(column: Column, kinds: tuple[str, ...]) -> bool:
    """An Arrow column of one of `kinds`. Categorical code leaves floats (NaN is missing in pandas) and integers
    with nulls (floats in pandas, so 1 reads "1.0") to pandas."""
    if not is_arrow(column):
        return False
    kind = _arrow_kind(column)
    return kind in kinds and not (kind == "int" and "float" not in kinds and column.null_count)


def _one_array(column: Any) -> Any:
    return column.combine_chunks() if hasattr(column, "combine_chunks") else column


def _arrow_numpy(array: Any, dtype: type, fill: float) -> np.ndarray:
    """A primitive Arrow array as numpy, nulls as `fill`, read from its buffers (pyarrow's `to_numpy` imports
    pandas)."""
    if not len(array):
        return np.empty(0, dtype=dtype)
    size = np.dtype(dtype).itemsize
    values = np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * size)
    if not array.null_count:
        return values
    valid = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    return np.where(valid[array.offset:array.offset + len(array)].astype(bool), values, fill)


def _as_pandas(column: Column) -> pd.Series:
    import pandas as pd

    if is_arrow(column):
        return column.to_pandas()
    return pd.Series(column) if isinstance(column, np.ndarray) else column


def numeric_values(series: Column) -> np.ndarray:
    """float64 values: numbers as they are (±inf kept), anything not a number (None, pd.NA, text) → NaN."""
    if isinstance(series, np.ndarray) and series.dtype.kind in "biuf":
        return series.astype("float64")
    if _native(series, ("float", "int", "bool")):
        import pyarrow as pa

        return _arrow_numpy(_one_array(series).cast(pa.float64(), safe=False), np.float64, np.nan)
    import pandas as pd

    series = _as_pandas(series)
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy()
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def pseudonym(value: str) -> str:
    """The unkeyed pseudonym of profiles written before keyed pseudonyms (`hashed`): only to compare with them."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def category_counts(series: Column, categories: Sequence[str], hashed: bool = False) -> tuple[np.ndarray, list[str]]:
    """Counts against a profile's categories: 0..k-1 known, k "other" (unseen), k+1 missing; plus the unseen values.

    Counts the column's distinct values in one hash pass (`text_counts`), then maps only those (so 1M rows with 50
    values cost one pass and 50 lookups)."""
    pairs, missing = text_counts(series)
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    counts = np.zeros(k + 2, dtype=np.int64)
    counts[k + 1] = missing
    unseen: set[str] = set()
    for text, count in pairs:
        slot = index.get(pseudonym(text) if hashed else text)
        if slot is None:
            unseen.add(text)
            slot = k
        counts[slot] += count
    return counts, sorted(unseen)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _floats(values: Any) -> list[float | None]:
    return [_json_float(v) for v in np.asarray(values, dtype=float).tolist()]


# ------------------------------------------------------------------------------------------------- profiles


def numeric_profile(values: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Quantile edges, counts (below-min, bins..., above-max, missing) and per-bin means of one numeric column
    (one sort serves the edges, the statistics and the counts)."""
    ordered = np.sort(values)
    lo, hi, _ = finite_span(ordered)
    finite = ordered[lo:hi]
    edges = quantile_edges(ordered, bins, ordered=True)
    if finite.size:
        low, high = float(finite[0]), float(finite[-1])
        stats = {"mean": float(finite.mean()), "std": float(finite.std()), "min": low, "max": high}
    else:
        stats = {"mean": None, "std": None, "min": None, "max": None}
    counts, centroids = binned(values, edges, ordered)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "centroids": _floats(centroids),
        "constant": bool(finite.size and stats["min"] == stats["max"]),
        **stats,
    }


def text_counts(series: Column) -> tuple[list[tuple[str, int]], int]:
    """(distinct present value as text, count) pairs, and the number of missing values."""
    if _native(series, CATEGORICAL_ARROW):
        import pyarrow.compute as pc

        counted = pc.value_counts(series)
        pairs = zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True)
        return [(str(v), int(c)) for v, c in pairs if v is not None], int(series.null_count)
    import pandas as pd

    series = _as_pandas(series)
    if series.dtype == object:  # as text first: factorize takes 1 and True for one value
        series = series.astype("string")
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    counts = np.bincount(codes + 1, minlength=len(uniques) + 1)
    return [(str(u), int(c)) for u, c in zip(uniques, counts[1:].tolist(), strict=True)], int(counts[0])


def categorical_profile(series: Column, top_k: int = DEFAULT_TOP_K, redacted: bool = False) -> dict[str, Any]:
    """Top-k values (as text) with counts, then "other" and "missing" counts; `redacted`: reports must not print
    the values (personal data)."""
    pairs, missing = text_counts(series)
    ranked = sorted(pairs, key=lambda kv: (-kv[1], kv[0]))
    top = ranked[:top_k]
    other = int(sum(c for _, c in ranked[top_k:]))
    return {
        "kind": "categorical",
        "categories": [str(k) for k, _ in top],
        "counts": [int(c) for _, c in top] + [other, missing],
        "hashed": False,
        "redacted": redacted,
    }


def feature_kinds(frame: Frame, spec: PipelineSpec | None = None) -> dict[str, str]:
    """Feature -> "numeric" | "categorical": from the spec's column types, else inferred from dtypes.

    Without a spec every column is a feature; datetime columns are skipped either way.
    """
    if spec is not None:
        from crispflow.model.features import column_groups

        groups = column_groups(spec)
        kinds = {c: "numeric" for c in groups["numeric"]} | {c: "categorical" for c in groups["text"]}
        return {c: kinds[c] for c in spec.feature_columns if c in kinds}
    if is_arrow(frame):
        return _arrow_feature_kinds(frame)
    import pandas as pd

    out: dict[str, str] = {}
    for name, dtype in frame.dtypes.items():
        if pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        out[str(name)] = "numeric" if numeric else "categorical"
    return out


def _arrow_feature_kinds(table: Any) -> dict[str, str]:
    """As for a DataFrame: timestamps skipped, integers and floats numeric, the rest categorical; a column of any
    other type decides as pandas would (a date, for one, is categorical in pandas)."""
    import pyarrow as pa

    out: dict[str, str] = {}
    for field in table.schema:
        if pa.types.is_timestamp(field.type):
            continue
        kind = _arrow_kind(table[field.name])
        if kind is None:
            out |= feature_kinds(table.select([field.name]).to_pandas())
        else:
            out[field.name] = "numeric" if kind in ("float", "int") else "categorical"
    return out


def performance_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Binary: precision, recall (at `threshold`) and ROC AUC, each {"value", "se", "ci_low", "ci_high"} (95 %,
    analytic).

    Standard errors: binomial for precision and recall, Hanley-McNeil for ROC AUC. An undefined metric (no
    predicted positive, one class only, non-finite scores) has None everywhere.
    """
    from crispflow.model.evaluation import weighted_metrics

    pred = scores >= threshold
    point = weighted_metrics(np.ones((1, labels.size)), labels, scores, pred, PERFORMANCE_METRICS)
    positives, predicted = int(labels.sum()), int(pred.sum())
    negatives = int(labels.size - positives)
    out: dict[str, Any] = {"threshold": float(threshold), "rows": int(labels.size), "positives": positives}
    for name in PERFORMANCE_METRICS:
        value = float(point[name][0])
        if not math.isfinite(value):
            out[name] = _estimate(None, None)
            continue
        if name == "roc_auc":
            se = hanley_mcneil_se(value, positives, negatives)
        else:
            se = math.sqrt(value * (1 - value) / (predicted if name == "precision" else positives))
        out[name] = _estimate(value, se, high=1.0)
    return out


def _estimate(value: float | None, se: float | None, high: float = math.inf) -> dict[str, Any]:
    """{"value", "se", "ci_low", "ci_high"}: a 95 % normal interval clipped to [0, high]; None where undefined."""
    if value is None or not math.isfinite(value) or se is None or not math.isfinite(se):
        return {"value": None if value is None or not math.isfinite(value) else value, "se": None,
                "ci_low": None, "ci_high": None}
    return {"value": value, "se": se, "ci_low": max(0.0, value - 1.96 * se),
            "ci_high": _json_float(min(high, value + 1.96 * se))}


def _mean_estimate(values: np.ndarray) -> tuple[float | None, float | None]:
    """The mean of per-row values and its standard error (None with fewer than two rows)."""
    if values.size == 0:
        return None, None
    mean = float(values.mean())
    return mean, float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else None


def task_performance(task: str, labels: np.ndarray, output: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """The task's performance metrics (`TASK_PERFORMANCE`) of `output` against `labels`, each with its analytic
    standard error and 95 % CI (see the module docstring). Rows with a non-finite output are left out (counted in
    `unscored`); `rows` is the number of rows judged."""
    if task == "binary":
        return performance_metrics(output, labels, threshold)
    from crispflow.model.tasks import per_row_loss

    finite = np.isfinite(output).all(axis=1) if output.ndim == 2 else np.isfinite(output)
    y, out = labels[finite], output[finite]
    result: dict[str, Any] = {"rows": int(y.size), "unscored": int((~finite).sum())}
    if task == "regression":
        error = out - y
        mse, se_mse = _mean_estimate(error**2)
        rmse = math.sqrt(mse) if mse is not None else None
        se_rmse = se_mse / (2 * rmse) if se_mse is not None and rmse else (0.0 if se_mse is not None else None)
        result["rmse"] = _estimate(rmse, se_rmse)
        result["mae"] = _estimate(*_mean_estimate(np.abs(error)))
        return result
    loss, se_loss = _mean_estimate(per_row_loss("multiclass", y, out))
    result["log_loss"] = _estimate(loss, se_loss)
    correct = (np.argmax(out, axis=1) == y).astype(float) if y.size else np.empty(0)
    accuracy = float(correct.mean()) if y.size else None
    se = math.sqrt(accuracy * (1 - accuracy) / y.size) if accuracy is not None and y.size > 1 else None
    result["accuracy"] = _estimate(accuracy, se, high=1.0)
    return result


def as_bool_labels(labels: Any, rows: int, what: str = "labels") -> np.ndarray:
    """Labels as a 1-d bool array of `rows` values (booleans or 0/1); anything else is a DriftInputError."""
    arr = np.asarray(labels).ravel()
    if arr.size != rows:
        raise DriftInputError(f"{what}: {arr.size} values for {rows} rows")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iuf" and np.isin(arr, [0, 1]).all():
        return arr.astype(bool)
    raise DriftInputError(f"{what}: must be boolean or 0/1 (True = the positive class), got dtype {arr.dtype}")


def as_scores(scores: Any, rows: int, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=float).ravel()
    if arr.size != rows:
        raise DriftInputError(f"{what}: {arr.size} values for {rows} rows")
    return arr


def as_task_labels(task: str, labels: Any, rows: int, classes: int = 0, what: str = "labels") -> np.ndarray:
    """The task's labels as an array of `rows` values: binary bool, regression finite float64, multiclass int64
    class codes in [0, classes); anything else is a DriftInputError naming `what`."""
    if task == "binary":
        return as_bool_labels(labels, rows, what)
    try:
        arr = np.asarray(labels, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DriftInputError(f"{what}: must be numbers for a {task} target") from None
    if arr.size != rows:
        raise DriftInputError(f"{what}: {arr.size} values for {rows} rows")
    if not np.isfinite(arr).all():
        raise DriftInputError(f"{what}: {int((~np.isfinite(arr)).sum())} values are missing or not finite")
    if task == "regression":
        return arr
    if not ((arr == np.round(arr)) & (arr >= 0) & (arr < classes)).all():
        bad = sorted({float(v) for v in arr[(arr != np.round(arr)) | (arr < 0) | (arr >= classes)]})[:5]
        raise DriftInputError(f"{what}: multiclass labels are class codes 0..{classes - 1}, got {bad}")
    return arr.astype(np.int64)


def as_task_output(task: str, scores: Any, rows: int, classes: int = 0, what: str = "scores") -> np.ndarray:
    """The model's output as an array: (rows,) for binary and regression, (rows, classes) probabilities for
    multiclass (a row of NaN = no output for that row); DriftInputError naming `what` otherwise."""
    if task != "multiclass":
        return as_scores(scores, rows, what)
    arr = np.asarray(scores, dtype=float)
    if arr.ndim != 2 or arr.shape != (rows, classes):
        raise DriftInputError(f"{what}: multiclass output must be {rows} x {classes} class probabilities, "
                              f"got shape {arr.shape}")
    return arr


def predicted_codes(output: np.ndarray) -> np.ndarray:
    """Multiclass: the predicted class code per row; -1 for a row without a finite output."""
    finite = np.isfinite(output).all(axis=1)
    codes = np.full(output.shape[0], -1, dtype=np.int64)
    if finite.any():
        codes[finite] = np.argmax(output[finite], axis=1)
    return codes


def class_texts(codes: np.ndarray, classes: Sequence[str]) -> pd.Series:
    """Class codes as the class labels' text (what the class profiles count); -1 (no class) is missing."""
    import pandas as pd

    names = np.array([*classes, None], dtype=object)
    return pd.Series(names[np.where((codes >= 0) & (codes < len(classes)), codes, len(classes))], dtype=object)


def class_profile(codes: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """A categorical profile with one category per class, in model order (never truncated to top_k)."""
    k = len(classes)
    valid = (codes >= 0) & (codes < k)
    counts = np.bincount(codes[valid], minlength=k)
    return {"kind": "categorical", "categories": [str(c) for c in classes],
            "counts": [int(c) for c in counts] + [0, int((~valid).sum())], "hashed": False}


def _task_of(spec: PipelineSpec | None, task: str | None, classes: Sequence[Any] | None) -> tuple[str, list[str]]:
    if spec is not None:
        if task is not None and task != spec.task:
            raise DriftInputError(f"task: {task!r} differs from the spec's task {spec.task!r}")
        task, classes = spec.task, spec.class_labels
    task = task or "binary"
    if task not in TASKS:
        raise DriftInputError(f"task: {task!r} is not one of {list(TASKS)}")
    names = [str(c) for c in classes or []]
    if task == "multiclass" and len(names) < 3:
        raise DriftInputError(f"classes: a multiclass profile needs its classes in model order, got {names}")
    return task, names if task == "multiclass" else []


def _outcome_profiles(task: str, classes: list[str], output: np.ndarray | None, labels: np.ndarray | None,
                      bins: int, threshold: float) -> dict[str, Any]:
    """The profile's prediction, predicted_class, label and performance entries (see the module docstring)."""
    rows = None if output is None else output.shape[0]
    rows = rows if labels is None else labels.size
    out: dict[str, Any] = {"prediction": None, "label": None, "performance": None}
    if output is not None:
        score = output if task != "multiclass" else np.max(output, axis=1)
        out["prediction"] = numeric_profile(score, bins)
        if task == "multiclass":
            out["predicted_class"] = class_profile(predicted_codes(output), classes)
    if labels is not None:
        if task == "binary":
            out["label"] = {"rows": rows, "positives": int(labels.sum())}
        elif task == "regression":
            out["label"] = numeric_profile(labels, bins) | {"rows": rows}
        else:
            out["label"] = class_profile(labels, classes) | {"rows": rows}
    if output is not None and labels is not None and rows:
        out["performance"] = task_performance(task, labels, output, threshold)
    return out


def build_profile(
    spec: PipelineSpec | None,
    frame: Frame,
    scores: Any = None,
    labels: Any = None,
    *,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    threshold: float = 0.5,
    task: str | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The JSON-safe reference profile of `frame` (see the module docstring).

    :param spec: chooses the features and their types (and PII columns) and the task; None infers the features
        from dtypes and takes `task` (default binary) and `classes`.
    :param scores: the model's output for the rows of `frame` (`crispflow.model.tasks.model_output`: binary
        P(positive), regression the predictions, multiclass (n, k) probabilities), optional.
    :param labels: the task's labels for the rows (`crispflow.model.tasks.labels`), optional; with a spec and no
        labels, the target column is used if `frame` has it.
    :param threshold: binary only: the decision threshold of precision and recall.
    :param task: without a spec: binary | multiclass | regression (with a spec it must match `spec.task`).
    :param classes: without a spec, multiclass: the class labels in model order.
    """
    if bins < 1 or top_k < 1:
        raise DriftInputError(f"bins ({bins}) and top_k ({top_k}) must be >= 1")
    task, class_names = _task_of(spec, task, classes)
    kinds = feature_kinds(frame, spec)
    columns = column_names(frame)
    missing = [c for c in kinds if c not in columns]
    if missing:
        raise DriftInputError(f"reference data: missing feature column(s) {missing}")
    if not kinds:
        raise DriftInputError("reference data: no feature columns to profile")
    pii = set(spec.pii_columns) if spec is not None else set()
    rows = len(frame)
    features: dict[str, Any] = {}
    for name, kind in kinds.items():
        if kind == "numeric":
            features[name] = numeric_profile(numeric_values(frame[name]), bins)
        else:
            features[name] = categorical_profile(frame[name], top_k, redacted=name in pii)
    if labels is None and spec is not None and spec.target.column in columns:
        from crispflow.model.tasks import labels as task_labels

        labels = task_labels(spec, frame)
    k = len(class_names)
    output = as_task_output(task, scores, rows, k) if scores is not None else None
    label_arr = as_task_labels(task, labels, rows, k) if labels is not None else None
    profile: dict[str, Any] = {
        "format": FORMAT,
        "task": task,
        "rows": rows,
        "pipeline": {"name": spec.name, "spec_hash": spec.spec_hash(), "target": spec.target.column}
        if spec is not None else None,
        "settings": {"bins": bins, "top_k": top_k},
        "features": features,
        **_outcome_profiles(task, class_names, output, label_arr, bins, threshold),
    }
    if task == "multiclass":
        profile["classes"] = class_names
    return profile


def profile_task(profile: Mapping[str, Any]) -> str:
    """The task a profile was built for (profiles written before tasks existed are binary)."""
    return str(profile.get("task") or "binary")


# ------------------------------------------------------------------------------------------------- storage


def check_profile(profile: Any, origin: str = "profile") -> dict[str, Any]:
    """The profile if it is one this version reads; else a DriftInputError naming the field."""
    if not isinstance(profile, Mapping):
        raise DriftInputError(f"{origin}: expected a JSON object, got {type(profile).__name__}")
    if profile.get("format") != FORMAT:
        raise DriftInputError(f"{origin}: format: expected {FORMAT!r}, got {profile.get('format')!r}")
    features = profile.get("features")
    if not isinstance(features, Mapping) or not features:
        raise DriftInputError(f"{origin}: features: expected a non-empty object")
    for name, feat in features.items():
        kind = feat.get("kind") if isinstance(feat, Mapping) else None
        need = {"numeric": ("edges", "counts", "centroids"), "categorical": ("categories", "counts")}.get(kind)
        if need is None:
            raise DriftInputError(f"{origin}: features.{name}.kind: expected 'numeric' or 'categorical', got {kind!r}")
        absent = [k for k in need if not isinstance(feat.get(k), list)]
        if absent:
            raise DriftInputError(f"{origin}: features.{name}: missing list field(s) {absent}")
        size = len(feat["edges"]) + 2 if kind == "numeric" else len(feat["categories"]) + 2
        if len(feat["counts"]) != size:
            got = len(feat["counts"])
            raise DriftInputError(f"{origin}: features.{name}.counts: expected {size} counts, got {got}")
    if not isinstance(profile.get("rows"), int) or profile["rows"] < 0:
        raise DriftInputError(f"{origin}: rows: expected a non-negative integer")
    task = profile_task(profile)
    if task not in TASKS:
        raise DriftInputError(f"{origin}: task: expected one of {list(TASKS)}, got {task!r}")
    classes = profile.get("classes")
    if task == "multiclass" and (not isinstance(classes, list) or len(classes) < 3):
        raise DriftInputError(f"{origin}: classes: a multiclass profile needs its class labels (>= 3), got {classes!r}")
    return dict(profile)


def profile_json(profile: Mapping[str, Any]) -> str:
    """Canonical JSON text (sorted keys, no NaN)."""
    return json.dumps(profile, sort_keys=True, allow_nan=False, separators=(",", ":"))


def save_profile(profile: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (`crispflow.lake.write_atomic`): a reader sees the old file or the whole new one."""
    target = Path(path)
    write_atomic(target, profile_json(check_profile(profile)).encode())
    return target


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read and check a stored profile; DriftInputError naming the file if it is missing or not a profile."""
    source = Path(path)
    try:
        data = json.loads(source.read_text())
    except FileNotFoundError:
        raise DriftInputError(f"{source}: no such profile file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DriftInputError(f"{source}: not a JSON profile: {exc}") from None
    return check_profile(data, str(source))
