"""What a model predicts, per task (`spec.task`): labels, the model's output, and per-row losses.

The one convention every phase shares:

| task | labels (`labels`) | output (`model_output`) |
|---|---|---|
| binary | bool, True = `target.positive` | (n,) probability of the positive class |
| multiclass | int64 code = index in `spec.class_labels` | (n, k) class probabilities, columns in that order |
| regression | float64 | (n,) predicted value |

Models are fitted on these labels, so a multiclass model's `classes_` are the codes 0..k-1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.spec import PipelineSpec

EPS = 1e-15  # probabilities are clipped to [EPS, 1 - EPS] in log losses


def _target(spec: PipelineSpec, frame: pd.DataFrame) -> pd.Series:
    column = spec.target.column
    if column not in frame.columns:
        raise CrispflowError(f"labels: the frame has no target column {column!r}")
    series = frame[column]
    if series.isna().any():
        raise CrispflowError(f"labels: target column {column!r} has {int(series.isna().sum())} missing values")
    return series


def _matches(series: pd.Series, value: Any) -> np.ndarray:
    """series == value, compared as values or as text ("1" matches 1, "True" matches True)."""
    as_text = series.astype("string").eq(str(value)).to_numpy(dtype=bool, na_value=False)
    try:
        as_value = series.eq(value).to_numpy(dtype=bool, na_value=False)
    except TypeError:  # e.g. a numeric column against a text value: only the text comparison applies
        as_value = np.zeros(len(series), dtype=bool)
    return as_value | as_text


def labels(spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    """The task's labels of `frame` (see the module docstring). A missing label, a class the spec does not
    list, or a non-numeric regression target is a CrispflowError naming the column, never silently a value."""
    series = _target(spec, frame)
    if spec.task == "binary":
        return _matches(series, spec.target.positive)
    if spec.task == "regression":
        import pandas as pd

        values = pd.to_numeric(series, errors="coerce")
        if values.isna().any():
            bad = int(values.isna().sum())
            raise CrispflowError(f"labels: regression target {spec.target.column!r} has {bad} non-numeric values")
        return values.to_numpy(dtype="float64")
    codes = np.full(len(series), -1, dtype=np.int64)
    for code, value in enumerate(spec.class_labels):
        codes[(codes < 0) & _matches(series, value)] = code
    if (codes < 0).any():
        unknown = sorted({str(v) for v in series[codes < 0].unique()})[:5]
        raise CrispflowError(f"labels: target {spec.target.column!r} has values {unknown} that are not in "
                             f"target.classes {spec.class_labels}")
    return codes


def label_of(spec: PipelineSpec, value: Any) -> bool | int | float:
    """One raw target value as the task's label (for feedback and monitoring); CrispflowError if invalid."""
    import pandas as pd

    return labels(spec, pd.DataFrame({spec.target.column: [value]}))[0].item()


def model_output(spec: PipelineSpec, model: Any, X: pd.DataFrame) -> np.ndarray:
    """The fitted model's output for `X` in the task's convention."""
    response = model.predict(X) if spec.task == "regression" else model.predict_proba(X)
    return output_from_response(spec.task, model, response, len(spec.class_labels))


def output_from_response(task: str, model: Any, response: Any, n_classes: int = 0) -> np.ndarray:
    """The task's output from the model's own response (predict for regression, else predict_proba in the
    model's `classes_` order): binary (n,) P(positive), multiclass (n, n_classes) probabilities by class code,
    regression (n,) predictions."""
    if task == "regression":
        return np.asarray(response, dtype="float64")
    proba = np.asarray(response, dtype="float64")
    classes = list(model.classes_)
    if task == "binary":
        return proba[:, classes.index(True)]
    out = np.zeros((len(proba), n_classes))
    for column, code in enumerate(classes):  # a class absent from training keeps probability 0
        out[:, int(code)] = proba[:, column]
    return out


def per_row_loss(task: str, y: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Each row's loss: log loss for binary and multiclass, squared error for regression (lower is better)."""
    y = np.asarray(y)
    output = np.asarray(output, dtype="float64")
    if task == "regression":
        return (output - y.astype("float64")) ** 2
    if task == "binary":
        p = np.clip(output, EPS, 1 - EPS)
        return -np.where(y.astype(bool), np.log(p), np.log1p(-p))
    p = np.clip(output[np.arange(len(y)), y.astype(np.int64)], EPS, 1.0)
    return -np.log(p)


def predicted_class(output: np.ndarray) -> np.ndarray:
    """Multiclass: the code of the most probable class per row (ties go to the lower code)."""
    return np.argmax(np.asarray(output), axis=1)


def no_skill_output(task: str, y_train: np.ndarray, n_rows: int, n_classes: int = 0) -> np.ndarray:
    """The no-skill model's output for `n_rows` rows, in the task's output convention: binary the training
    prevalence, multiclass the training class frequencies ((n_rows, k); `n_classes` = k, 0 = the largest code
    + 1), regression the training mean. The cold-start blessing floor compares a first model with it."""
    y = np.asarray(y_train).ravel()
    if not y.size:
        raise CrispflowError("no_skill_output: y_train is empty; the no-skill model needs training labels")
    if task == "binary":
        return np.full(n_rows, float(np.mean(y.astype(bool))))
    if task == "regression":
        mean = float(np.mean(y.astype("float64")))
        if not np.isfinite(mean):
            raise CrispflowError("no_skill_output: y_train has non-finite values")
        return np.full(n_rows, mean)
    if task != "multiclass":
        raise CrispflowError(f"no_skill_output: task {task!r} is not binary, multiclass or regression")
    codes = y.astype(np.int64)
    if codes.min() < 0 or (n_classes and codes.max() >= n_classes):
        raise CrispflowError(f"no_skill_output: class codes must be in 0..{max(n_classes, 1) - 1}, "
                             f"got {codes.min()}..{codes.max()}")
    frequencies = np.bincount(codes, minlength=n_classes or int(codes.max()) + 1) / codes.size
    return np.tile(frequencies, (n_rows, 1))
