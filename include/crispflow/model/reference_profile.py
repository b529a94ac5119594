"""The reference profile of a model version: what its training data looked like, binned once, as JSON.

`build_profile(spec, frame, scores, labels)` is computed at training time (and logged to MLflow with the model);
`compute_drift` (crispflow.monitoring.drift) later bins every window against it. Per feature:

- **numeric** (spec types int/float, or numeric dtypes without a spec): edges = the reference minimum, the
  interior quantiles (``bins`` equal-frequency bins; ties collapse, so a 0/1 column gets 2 bins) and just above
  the maximum. A value's bin is ``searchsorted(edges, x, side="right")``: bin 0 is "below the reference minimum",
  the last value bin "above the reference maximum" (both empty in the reference, so out-of-range values show up
  as drift), ±inf fall into those outer bins, NaN gets its own last bin. Stored with each bin's count and the mean
  of its finite values (for the Wasserstein distance), plus mean/std/min/max of the finite values. The binning
  and the standard errors below are `crispflow.stats`'s (quantile_edges, bin_codes, bin_sums, hanley_mcneil_se).
- **categorical** (spec types category/string/bool, other dtypes without a spec): the ``top_k`` most frequent
  values as text (ties by name) and their counts, then "other" (every remaining value; unseen values land here in a
  window) and "missing". For a spec column marked ``pii: true`` the values are stored as ``sha256:<16 hex>``
  pseudonyms of their text, never in clear.
- **prediction** (if `scores` are given): the score's numeric profile; **label** (if `labels` are given): row count
  and positive rate; **performance** (both given): precision/recall (at `threshold`, default 0.5) and ROC AUC with
  their analytic standard errors, so a window's metrics can be compared with both samples' noise accounted for.
  Pass out-of-fold or holdout scores here: in-sample scores make the reference look better than it is.

Datetime columns are skipped. Everything is JSON-safe (NaN → null) and deterministic: the same data gives the same
profile byte for byte (`save_profile` writes sorted keys, atomically).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crispflow.errors import CrispflowError
from crispflow.lake import write_atomic
from crispflow.stats import bin_codes, bin_sums, hanley_mcneil_se, quantile_edges

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec

FORMAT = "crispflow.drift_profile/1"
DEFAULT_BINS = 20
DEFAULT_TOP_K = 20
PERFORMANCE_METRICS = ("precision", "recall", "roc_auc")
PREDICTION = "__prediction__"


class DriftInputError(CrispflowError):
    """Bad input to profiling or drift computation; the message names the column, file or field and the rule."""


# ------------------------------------------------------------------------------------------------- values


def numeric_values(series: pd.Series) -> np.ndarray:
    """float64 values: numbers as they are (±inf kept), anything not a number (None, pd.NA, text) → NaN."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy()
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def pseudonym(value: str) -> str:
    """The stored form of a PII category: a short sha256 of its text (a pseudonym, not anonymisation)."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def category_codes(series: pd.Series, categories: Sequence[str], hashed: bool = False) -> tuple[np.ndarray, list[str]]:
    """Codes against a profile's categories: 0..k-1 known, k "other" (unseen), k+1 missing; plus the unseen values.

    Hash-factorises the column once, then maps only its distinct values (so 1M rows with 50 values cost one pass).
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    texts = [str(u) for u in uniques]
    keys = [pseudonym(t) for t in texts] if hashed else texts
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    lookup = np.array([index.get(key, k) for key in keys] + [k + 1], dtype=np.int64)  # last: the NaN sentinel -1
    unseen = sorted({t for t, key in zip(texts, keys, strict=True) if key not in index})
    return lookup[codes], unseen


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _floats(values: Any) -> list[float | None]:
    return [_json_float(v) for v in np.asarray(values, dtype=float).tolist()]


# ------------------------------------------------------------------------------------------------- profiles


def numeric_profile(values: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Quantile edges, counts (below-min, bins..., above-max, missing) and per-bin means of one numeric column."""
    finite = values[np.isfinite(values)]
    edges = quantile_edges(finite, bins)
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        stats = {"mean": float(finite.mean()), "std": float(finite.std()), "min": low, "max": high}
    else:
        stats = {"mean": None, "std": None, "min": None, "max": None}
    counts, centroids = bin_sums(values, bin_codes(values, edges), edges.size + 2)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "centroids": _floats(centroids),
        "constant": bool(finite.size and stats["min"] == stats["max"]),
        **stats,
    }


def categorical_profile(series: pd.Series, top_k: int = DEFAULT_TOP_K, hashed: bool = False) -> dict[str, Any]:
    """Top-k values (as text, or pseudonyms if `hashed`) with counts, then "other" and "missing" counts."""
    present = series[series.notna()]
    text = present.astype("string")
    counts = text.value_counts(sort=False)
    if hashed:  # pseudonymise the distinct values, not every row
        counts = pd.Series(counts.to_numpy(), index=[pseudonym(str(v)) for v in counts.index]).groupby(level=0).sum()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[:top_k]
    other = int(sum(c for _, c in ranked[top_k:]))
    return {
        "kind": "categorical",
        "categories": [str(k) for k, _ in top],
        "counts": [int(c) for _, c in top] + [other, int(series.size - present.size)],
        "hashed": hashed,
    }


def feature_kinds(frame: pd.DataFrame, spec: PipelineSpec | None = None) -> dict[str, str]:
    """Feature -> "numeric" | "categorical": from the spec's column types, else inferred from dtypes.

    Without a spec every column is a feature; datetime columns are skipped either way.
    """
    if spec is not None:
        from crispflow.model.features import column_groups

        groups = column_groups(spec)
        kinds = {c: "numeric" for c in groups["numeric"]} | {c: "categorical" for c in groups["text"]}
        return {c: kinds[c] for c in spec.feature_columns if c in kinds}
    out: dict[str, str] = {}
    for name, dtype in frame.dtypes.items():
        if pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        out[str(name)] = "numeric" if numeric else "categorical"
    return out


def performance_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall (at `threshold`) and ROC AUC, each {"value", "se", "ci_low", "ci_high"} (95 %, analytic).

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
            out[name] = {"value": None, "se": None, "ci_low": None, "ci_high": None}
            continue
        if name == "roc_auc":
            se = hanley_mcneil_se(value, positives, negatives)
        else:
            se = math.sqrt(value * (1 - value) / (predicted if name == "precision" else positives))
        out[name] = {"value": value, "se": se,
                     "ci_low": max(0.0, value - 1.96 * se), "ci_high": min(1.0, value + 1.96 * se)}
    return out


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


def build_profile(
    spec: PipelineSpec | None,
    frame: pd.DataFrame,
    scores: Any = None,
    labels: Any = None,
    *,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """The JSON-safe reference profile of `frame` (see the module docstring).

    :param spec: chooses the features and their types (and PII columns); None infers them from dtypes.
    :param scores: the model's positive-class scores for the rows of `frame` (optional).
    :param labels: boolean labels for the rows (optional); with a spec and no labels, the target column is used
        if `frame` has it.
    """
    if bins < 1 or top_k < 1:
        raise DriftInputError(f"bins ({bins}) and top_k ({top_k}) must be >= 1")
    kinds = feature_kinds(frame, spec)
    missing = [c for c in kinds if c not in frame.columns]
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
            features[name] = categorical_profile(frame[name], top_k, hashed=name in pii)
    if labels is None and spec is not None and spec.target.column in frame.columns:
        from crispflow.model.features import labels as spec_labels

        labels = spec_labels(spec, frame)
    score_arr = as_scores(scores, rows) if scores is not None else None
    label_arr = as_bool_labels(labels, rows) if labels is not None else None
    profile: dict[str, Any] = {
        "format": FORMAT,
        "rows": rows,
        "pipeline": {"name": spec.name, "spec_hash": spec.spec_hash(), "target": spec.target.column}
        if spec is not None else None,
        "settings": {"bins": bins, "top_k": top_k},
        "features": features,
        "prediction": numeric_profile(score_arr, bins) if score_arr is not None else None,
        "label": {"rows": rows, "positives": int(label_arr.sum())} if label_arr is not None else None,
        "performance": None,
    }
    if score_arr is not None and label_arr is not None and rows:
        profile["performance"] = performance_metrics(score_arr, label_arr, threshold)
    return profile


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
