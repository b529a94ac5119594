"""From a published frame to model inputs: feature selection, labels and the preprocessing that travels with a model.

Everything that turns raw columns into numbers lives inside the scikit-learn Pipeline (`FrameTyper`, then a
`ColumnTransformer`), so a pickled model scores a frame exactly as it was trained: no train/serve skew. The
pipeline accepts what the data phase publishes (`batch.conform`: Int64 / float64 / object / boolean /
datetime64, with pd.NA, None or NaN as missing) as well as plain pandas dtypes.

Column handling by spec type:
- int, float: coerced to float64 (missing and unparseable → NaN), median imputation with a missing indicator,
  standard scaling.
- category, string, bool: coerced to text (missing → NaN), most-frequent imputation, one-hot encoding; categories
  seen in less than `MIN_CATEGORY_FREQUENCY` of the training rows share one "infrequent" column, and a category
  never seen in training is scored as infrequent (or as all zeros when no category was infrequent).
- datetime (any but the time column, which is never a feature): expanded into numeric `<col>__year`,
  `<col>__month` and `<col>__day_of_week`, then treated as numbers.

The model artifact pickles `FrameTyper` by reference: scoring needs `crispflow` importable (same version).

This module imports pandas and scikit-learn: import it lazily from code that runs at DAG parse time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from crispflow.data.extracts import to_utc_naive
from crispflow.errors import CrispflowError
from crispflow.model import tasks

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec

MIN_CATEGORY_FREQUENCY = 0.01  # share of training rows below which a category is pooled as "infrequent"
DATETIME_PARTS = ("year", "month", "day_of_week")
NUMERIC_TYPES = ("int", "float")
TEXT_TYPES = ("category", "string", "bool")


def require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CrispflowError(f"{what}: the frame has no column(s) {missing}")


def features(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The spec's feature columns of `frame`, in spec order (values untouched: the pipeline types them)."""
    columns = spec.feature_columns
    require_columns(frame, columns, "features")
    return frame[columns]


def labels(spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    """The task's labels (crispflow.model.tasks.labels): binary booleans, target == positive (compared as values,
    or as text: "1" matches 1, "True" matches True). A missing label is an error, never silently a negative."""
    return tasks.labels(spec, frame)


def column_groups(spec: PipelineSpec) -> dict[str, tuple[str, ...]]:
    """Feature columns by handling: numeric, text (categorical) and datetime."""
    types = {c.name: c.type for c in spec.columns}
    cols = spec.feature_columns
    return {
        "numeric": tuple(c for c in cols if types[c] in NUMERIC_TYPES),
        "text": tuple(c for c in cols if types[c] in TEXT_TYPES),
        "datetime": tuple(c for c in cols if types[c] == "datetime"),
    }


def _as_float(series: pd.Series) -> np.ndarray:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "fiu":  # fast path (serving): plain numpy numbers
        return series.to_numpy(dtype="float64", copy=True)
    return pd.to_numeric(series, errors="coerce").astype("Float64").to_numpy(dtype="float64", na_value=np.nan)


def _as_text(series: pd.Series) -> np.ndarray:
    if series.dtype == object:  # fast path (serving): Python str or missing only, kept as they are
        values = series.to_numpy(dtype=object)
        if all(type(v) is str or v is None or (type(v) is float and v != v) for v in values):
            return np.array([np.nan if type(v) is not str else v for v in values], dtype=object)
    return series.astype("string").to_numpy(dtype=object, na_value=np.nan)


class FrameTyper(TransformerMixin, BaseEstimator):
    """First pipeline step: one canonical dtype per column, whatever pandas dtype the frame brings.

    Numbers → float64 with NaN, text → object with NaN (never None or pd.NA, which sklearn's imputers miss),
    datetimes → float64 year / month / day of week. Stateless; extra columns are ignored.
    """

    def __init__(self, numeric: tuple[str, ...] = (), text: tuple[str, ...] = (), datetime: tuple[str, ...] = ()):
        self.numeric = numeric
        self.text = text
        self.datetime = datetime

    def fit(self, X: pd.DataFrame, y: Any = None) -> FrameTyper:
        self.columns_ = np.asarray(self._output_names(), dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        require_columns(X, [*self.numeric, *self.text, *self.datetime], "model input")
        out: dict[str, Any] = {c: _as_float(X[c]) for c in self.numeric}
        for col in self.datetime:
            when = to_utc_naive(X[col])
            for part in DATETIME_PARTS:
                out[f"{col}__{part}"] = getattr(when.dt, part).astype("float64").to_numpy()
        out.update({c: _as_text(X[c]) for c in self.text})
        return pd.DataFrame(out, index=X.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self._output_names(), dtype=object)

    def numeric_outputs(self) -> list[str]:
        return [*self.numeric, *(f"{c}__{p}" for c in self.datetime for p in DATETIME_PARTS)]

    def _output_names(self) -> list[str]:
        return [*self.numeric_outputs(), *self.text]


def build_preprocessor(spec: PipelineSpec) -> Pipeline:
    """`FrameTyper` then a `ColumnTransformer` (imputation, scaling, one-hot), dense output for every estimator."""
    typer = FrameTyper(**column_groups(spec))
    numeric = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
    )
    text = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
            (
                "onehot",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist", min_frequency=MIN_CATEGORY_FREQUENCY, sparse_output=False
                ),
            ),
        ]
    )
    parts = [("num", numeric, typer.numeric_outputs()), ("cat", text, list(typer.text))]
    columns = ColumnTransformer([p for p in parts if p[2]], remainder="drop", sparse_threshold=0.0)
    return Pipeline([("types", typer), ("columns", columns)])
