"""A compiled scorer: the fitted crispflow model re-expressed as numpy arrays, for low-latency serving.

A crispflow model is `Pipeline([FrameTyper, ColumnTransformer]) + estimator`, possibly inside a
`CalibratedClassifierCV(ensemble=False)` (crispflow.model.training). Its `predict_proba` costs about as much for
one row as for hundreds (pandas and scikit-learn input checking on every call). `compile_model` reads the fitted
parameters once and scores with numpy:

- preprocessing: FrameTyper typing, SimpleImputer (statistics and missing indicators), StandardScaler,
  OneHotEncoder (frequent categories, the infrequent column, unknown categories as infrequent or all zeros);
- estimator: linear models (LogisticRegression, Ridge, LinearRegression, Lasso, ElasticNet) as a matrix product
  with scikit-learn's own link (logistic, softmax); tree ensembles through the fitted estimator's own
  predict / predict_proba / decision_function on the compiled matrix (skipping the pandas part only);
- calibration: `calibrate`, the one implementation of `_CalibratedClassifier.predict_proba` for sigmoid and
  isotonic calibrators (training's out-of-fold scores and the explainer use it too).

Anything else raises `UnsupportedModel` naming what is not supported: the caller scores with the pipeline.
`verified_scorer` compiles and then checks the scorer against the model itself on a verification frame (synthetic
rows from the model's own imputation statistics and categories, with missing values, unseen categories and
extremes, plus any rows the caller adds such as an explainer record's probe rows): a scorer whose output differs
by more than `TOLERANCE` raises `ScorerMismatch` and is never used.

Inputs: `response_frame(frame)` takes what the model takes (a frame of the feature columns); `response_records`
takes JSON records (dicts) straight to numpy without a DataFrame, and returns None when a value has a type the
fast path does not type exactly like FrameTyper (then score `frame` instead). The response is the model's own:
predict_proba (columns in `classes_` order) for classifiers, predict for regressors.

This module imports numpy only at import time; scikit-learn is imported by the functions that need it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crispflow.errors import CrispflowError
from crispflow.model.synthetic import UNSEEN

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from crispflow.model.features import FrameTyper

TOLERANCE = 1e-9  # max abs difference of the response, compiled vs the model, at verification
TASKS = ("binary", "multiclass", "regression")
LINEAR_ESTIMATORS = {
    "sklearn.linear_model.LogisticRegression": "classifier",
    "sklearn.linear_model.Ridge": "regressor",
    "sklearn.linear_model.LinearRegression": "regressor",
    "sklearn.linear_model.Lasso": "regressor",
    "sklearn.linear_model.ElasticNet": "regressor",
}
TREE_ESTIMATORS = {
    "sklearn.ensemble.HistGradientBoostingClassifier": "classifier",
    "sklearn.ensemble.HistGradientBoostingRegressor": "regressor",
    "sklearn.ensemble.GradientBoostingClassifier": "classifier",
    "sklearn.ensemble.GradientBoostingRegressor": "regressor",
    "sklearn.ensemble.RandomForestClassifier": "classifier",
    "sklearn.ensemble.RandomForestRegressor": "regressor",
    "sklearn.ensemble.ExtraTreesClassifier": "classifier",
    "sklearn.ensemble.ExtraTreesRegressor": "regressor",
    "sklearn.tree.DecisionTreeClassifier": "classifier",
    "sklearn.tree.DecisionTreeRegressor": "regressor",
}
CALIBRATION_METHODS = ("sigmoid", "isotonic")
_EXTREMES = (-1e12, -1.0, 0.0, 1e12)  # numeric values of the generated verification rows
_NUMBER_TYPES = frozenset({int, float, type(None)})  # a JSON number or null (bool is not a number here)
_TEXT_TYPES = frozenset({str, bool, type(None)})


class UnsupportedModel(CrispflowError):
    """The model has a part the compiled scorer (or the decomposition into parts) does not support; the message
    names it."""


class ScorerMismatch(CrispflowError):
    """The compiled scorer's output differs from the model's own on the verification rows: it is not used."""


# --- the fitted model's parts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """A crispflow model taken apart: optional calibration wrapper, preprocessing and final estimator."""

    model: Any  # as served (predict_proba / predict)
    calibrated: Any  # the fitted sklearn _CalibratedClassifier (ensemble=False), or None
    preprocess: Pipeline  # fitted: FrameTyper, ColumnTransformer
    typer: FrameTyper
    columns: ColumnTransformer
    estimator: Any
    estimator_name: str  # the public import path, e.g. sklearn.linear_model.LogisticRegression


def public_name(obj: Any) -> str:
    """`sklearn.linear_model.LogisticRegression` rather than the private module the class is defined in."""
    cls = type(obj)
    module = cls.__module__
    if module.startswith("sklearn."):
        parts = module.split(".")
        for cut in range(2, len(parts) + 1):
            candidate = ".".join(parts[:cut])
            if getattr(importlib.import_module(candidate), cls.__name__, None) is cls:
                return f"{candidate}.{cls.__name__}"
    return f"{module}.{cls.__qualname__}"


def _flat_steps(pipeline: Pipeline) -> list[Any]:
    from sklearn.pipeline import Pipeline

    out: list[Any] = []
    for name, step in pipeline.steps:
        if isinstance(step, Pipeline):
            out.extend(_flat_steps(step))
        elif step is None or step == "passthrough":
            raise UnsupportedModel(f"model: pipeline step {name!r} is {step!r}; crispflow models have none")
        else:
            out.append(step)
    return out


def unwrap(model: Any) -> Parts:
    """The parts of a model as crispflow.model.training builds it: Pipeline([preprocess, model]), possibly wrapped
    in CalibratedClassifierCV(ensemble=False). UnsupportedModel for any other shape."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from crispflow.model.features import FrameTyper

    calibrated = None
    inner = model
    if isinstance(model, CalibratedClassifierCV):
        fitted = getattr(model, "calibrated_classifiers_", None)
        if fitted is None:
            raise UnsupportedModel("model: the CalibratedClassifierCV is not fitted")
        if len(fitted) != 1:
            raise UnsupportedModel(f"model: a CalibratedClassifierCV with {len(fitted)} calibrated classifiers "
                                   "(ensemble=True) has no single pipeline; crispflow fits ensemble=False")
        calibrated = fitted[0]
        inner = calibrated.estimator
    if not isinstance(inner, Pipeline):
        raise UnsupportedModel(f"model: expected a scikit-learn Pipeline (preprocessing, estimator), got "
                               f"{type(inner).__name__}")
    steps = _flat_steps(inner)
    if len(steps) != 3 or not isinstance(steps[0], FrameTyper) or not isinstance(steps[1], ColumnTransformer):
        kinds = [type(s).__name__ for s in steps]
        raise UnsupportedModel(f"model: expected the steps FrameTyper, ColumnTransformer, estimator, got {kinds}")
    typer, columns, estimator = steps
    if not hasattr(columns, "transformers_") or not hasattr(typer, "columns_"):
        raise UnsupportedModel("model: the preprocessing is not fitted")
    return Parts(model=model, calibrated=calibrated, preprocess=inner[:-1], typer=typer, columns=columns,
                 estimator=estimator, estimator_name=public_name(estimator))


def transform(parts: Parts, frame: pd.DataFrame) -> np.ndarray:
    """The model's own preprocessing of `frame` (scikit-learn's), dense float64."""
    transformed = parts.preprocess.transform(frame)
    return np.asarray(transformed.toarray() if hasattr(transformed, "toarray") else transformed, dtype="float64")


# --- calibration --------------------------------------------------------------------------------------------


def _calibrator_predict(calibrator: Any, score: np.ndarray) -> np.ndarray:
    """`calibrator.predict(score)`; a sigmoid calibrator's formula inline (its predict's input checks cost more
    than the formula)."""
    from scipy.special import expit
    from sklearn.calibration import _SigmoidCalibration

    if type(calibrator) is _SigmoidCalibration:
        return expit(-(calibrator.a_ * score + calibrator.b_))
    return calibrator.predict(score)


def calibrate(calibrated: Any, raw: np.ndarray) -> np.ndarray:
    """The probabilities the fitted `_CalibratedClassifier` `calibrated` (sigmoid or isotonic) gives rows whose
    uncalibrated response (decision_function, else predict_proba, of its estimator) is `raw`, exactly as
    scikit-learn's `_CalibratedClassifier.predict_proba` computes them. Columns follow `calibrated.classes`."""
    if calibrated.method not in CALIBRATION_METHODS:
        raise UnsupportedModel(f"calibration: method {calibrated.method!r} is not one of {list(CALIBRATION_METHODS)}")
    classes = np.asarray(calibrated.classes).tolist()
    n_classes = len(classes)
    raw = np.asarray(raw, dtype="float64").reshape(len(raw), -1)
    if n_classes == 2 and raw.shape[1] == 2:  # predict_proba of a binary estimator: the positive column
        raw = raw[:, -1:]
    position = {c: i for i, c in enumerate(classes)}
    columns = [1] if n_classes == 2 else [position[c] for c in np.asarray(calibrated.estimator.classes_).tolist()]
    proba = np.zeros((len(raw), n_classes))
    for index, score, calibrator in zip(columns, raw.T, calibrated.calibrators, strict=True):
        proba[:, index] = _calibrator_predict(calibrator, score)
    if n_classes == 2:
        proba[:, 0] = 1.0 - proba[:, 1]
    else:
        total = np.sum(proba, axis=1)[:, np.newaxis]
        proba = np.divide(proba, total, out=np.full_like(proba, 1 / n_classes), where=total != 0)
    proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
    return proba


# --- compiled preprocessing ---------------------------------------------------------------------------------


Step = Callable[[np.ndarray], np.ndarray]


def _missing(x: np.ndarray) -> np.ndarray:
    return np.isnan(x) if x.dtype.kind == "f" else np.asarray(x != x, dtype=bool)  # object: NaN is not itself


def _imputer_step(step: Any, name: str) -> Step:
    missing_values = step.missing_values
    if not (isinstance(missing_values, float) and math.isnan(missing_values)):
        raise UnsupportedModel(f"model: part {name!r}: SimpleImputer(missing_values={missing_values!r}); only NaN")
    stats = np.asarray(step.statistics_)
    if not step.keep_empty_features and any(isinstance(s, float) and math.isnan(s) for s in stats.tolist()):
        raise UnsupportedModel(f"model: part {name!r}: SimpleImputer drops all-missing columns "
                               "(keep_empty_features=False)")
    indicator = step.indicator_ if step.add_indicator else None
    if indicator is not None and indicator.features != "missing-only":
        raise UnsupportedModel(f"model: part {name!r}: MissingIndicator(features={indicator.features!r})")
    flagged = None if indicator is None else np.asarray(indicator.features_, dtype=np.intp)

    def impute(x: np.ndarray) -> np.ndarray:
        mask = _missing(x)
        out = np.where(mask, stats, x) if mask.any() else x
        if flagged is None:
            return out
        return np.hstack([out.astype("float64"), mask[:, flagged].astype("float64")])

    return impute


def _scaler_step(step: Any) -> Step:
    mean = np.asarray(step.mean_, dtype="float64") if step.with_mean else None
    scale = np.asarray(step.scale_, dtype="float64") if step.with_std else None

    def scale_(x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype="float64")
        if mean is not None:
            out -= mean
        if scale is not None:
            out /= scale
        return out

    return scale_


def _onehot_lookups(step: Any, name: str) -> tuple[list[dict[Any, int]], list[int], int]:
    """(per input: category → output column within the part, per input: the column of unknown categories or -1,
    width). Frequent categories in `categories_` order, then the infrequent column, as scikit-learn lays them."""
    if step.drop_idx_ is not None:
        raise UnsupportedModel(f"model: part {name!r}: OneHotEncoder(drop={step.drop!r})")
    if step.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise UnsupportedModel(f"model: part {name!r}: OneHotEncoder(handle_unknown={step.handle_unknown!r})")
    try:
        infrequent = list(step.infrequent_categories_)
    except AttributeError:  # no min_frequency / max_categories
        infrequent = [None] * len(step.categories_)
    lookups, unknown, width = [], [], 0
    for cats, rare in zip(step.categories_, infrequent, strict=True):
        rare_set = set() if rare is None else set(np.asarray(rare, dtype=object).tolist())
        lookup: dict[Any, int] = {}
        for cat in np.asarray(cats, dtype=object).tolist():
            if cat not in rare_set:
                lookup[cat] = width
                width += 1
        if rare_set:
            lookup.update(dict.fromkeys(rare_set, width))
            width += 1
        lookups.append(lookup)
        unknown.append(width - 1 if rare_set and step.handle_unknown == "infrequent_if_exist" else -1)
    if width != len(step.get_feature_names_out()):
        raise UnsupportedModel(f"model: part {name!r}: one-hot layout of {width} columns does not match the "
                               f"encoder's {len(step.get_feature_names_out())}")
    return lookups, unknown, width


VECTOR_ROWS = 256  # from this many rows a one-hot column is encoded by a hash index (C), below by a dict loop


def _onehot_step(step: Any, name: str) -> Step:
    import pandas as pd

    lookups, unknown, width = _onehot_lookups(step, name)
    # the same lookups as hash indexes, for large batches: category position → output column
    indexes = [(pd.Index(list(lookup), dtype=object), np.fromiter(lookup.values(), dtype=np.intp, count=len(lookup)))
               for lookup in lookups]

    def encode(x: np.ndarray) -> np.ndarray:
        n = len(x)
        out = np.zeros((n, width))
        for j, (lookup, other) in enumerate(zip(lookups, unknown, strict=True)):
            if n >= VECTOR_ROWS:
                index, columns = indexes[j]
                found = index.get_indexer(x[:, j])  # -1: not a known category (also NaN and non-text values)
                column = np.where(found >= 0, columns[found], other)
                rows = np.flatnonzero(column >= 0)
                out[rows, column[rows]] = 1.0
                continue
            for i, value in enumerate(x[:, j].tolist()):
                column_ = lookup.get(value, other) if isinstance(value, str) else other
                if column_ >= 0:
                    out[i, column_] = 1.0
        return out

    return encode


def _part_steps(name: str, transformer: Any) -> list[Step]:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    out: list[Step] = []
    for step in steps:
        if isinstance(step, SimpleImputer):
            out.append(_imputer_step(step, name))
        elif isinstance(step, StandardScaler):
            out.append(_scaler_step(step))
        elif isinstance(step, OneHotEncoder):
            out.append(_onehot_step(step, name))
        else:
            raise UnsupportedModel(f"model: part {name!r} has a {type(step).__name__} step; the compiled scorer "
                                   "supports SimpleImputer, StandardScaler and OneHotEncoder")
    return out


@dataclass(frozen=True)
class _Part:
    """One ColumnTransformer part: the FrameTyper outputs it reads, its steps and its output columns."""

    name: str
    inputs: tuple[str, ...]
    text: bool  # object input (text columns) rather than float64
    steps: tuple[Step, ...]
    out: slice


def _parts_of(parts: Parts) -> tuple[tuple[_Part, ...], int]:
    typer, ct = parts.typer, parts.columns
    numeric, text = set(typer.numeric_outputs()), set(typer.text)
    found, width = [], 0
    for name, transformer, cols in ct.transformers_:
        where = ct.output_indices_[name]
        if name == "remainder" or transformer == "drop":
            if where.stop > where.start:
                raise UnsupportedModel(f"model: column transformer part {name!r} passes columns through")
            continue
        if isinstance(cols, str) or not all(isinstance(c, str) for c in cols):
            raise UnsupportedModel(f"model: column transformer part {name!r} selects columns by {cols!r}")
        inputs = tuple(cols)
        if set(inputs) <= numeric:
            is_text = False
        elif set(inputs) <= text:
            is_text = True
        else:
            raise UnsupportedModel(f"model: column transformer part {name!r} mixes or reads unknown columns")
        found.append(_Part(name, inputs, is_text, tuple(_part_steps(name, transformer)), where))
        width = max(width, where.stop)
    if sum(p.out.stop - p.out.start for p in found) != width:
        raise UnsupportedModel("model: the column transformer's outputs do not tile its matrix")
    return tuple(found), width


# --- compiled estimator -------------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    """scikit-learn's `extmath.softmax`, in the same order of operations."""
    z = z - np.max(z, axis=1).reshape((-1, 1))
    np.exp(z, z)
    z /= np.sum(z, axis=1).reshape((-1, 1))
    return z


def _linear(estimator: Any, name: str, task: str) -> tuple[Step, Step | None]:
    """(raw response: decision_function or predict; probabilities from the raw response, or None) of a linear
    model, from its coefficients."""
    coef = np.asarray(estimator.coef_, dtype="float64")
    intercept = np.asarray(estimator.intercept_, dtype="float64")
    if task == "regression":
        if coef.ndim != 1:
            raise UnsupportedModel(f"model: {name} with {coef.shape[0]} targets; one is supported")
        return (lambda x: x @ coef + intercept), None
    if name != "sklearn.linear_model.LogisticRegression":
        raise UnsupportedModel(f"model: {name} is not a classifier")
    coef_t = coef.T

    def decision(x: np.ndarray) -> np.ndarray:
        scores = x @ coef_t + intercept
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    if len(estimator.classes_) <= 2:  # _predict_proba_lr: the logistic of the decision
        from scipy.special import expit

        def proba(d: np.ndarray) -> np.ndarray:
            p = expit(d)
            return np.vstack([1 - p, p]).T
    else:
        proba = _softmax
    return decision, proba


def _tree(estimator: Any, task: str, calibrated: bool) -> tuple[Step, Step | None]:
    if task == "regression":
        return (lambda x: np.asarray(estimator.predict(x), dtype="float64")), None
    if calibrated and hasattr(estimator, "decision_function"):
        return (lambda x: np.asarray(estimator.decision_function(x), dtype="float64")), None
    return (lambda x: np.asarray(estimator.predict_proba(x), dtype="float64")), None


# --- the scorer ---------------------------------------------------------------------------------------------


class CompiledScorer:
    """The model's response from numpy arrays: build it with `compile_model` (or `verified_scorer`)."""

    def __init__(self, parts: Parts, task: str) -> None:
        if task not in TASKS:
            raise UnsupportedModel(f"task: {task!r} is not one of {list(TASKS)}")
        name = parts.estimator_name
        kind = LINEAR_ESTIMATORS.get(name) or TREE_ESTIMATORS.get(name)
        if kind is None:
            raise UnsupportedModel(f"model: estimator {name} has no compiled scorer (supported: "
                                   f"{sorted({*LINEAR_ESTIMATORS, *TREE_ESTIMATORS})})")
        if (kind == "regressor") != (task == "regression"):
            raise UnsupportedModel(f"model: estimator {name} is a {kind}, the task is {task}")
        if parts.calibrated is not None and parts.calibrated.method not in CALIBRATION_METHODS:
            raise UnsupportedModel(f"calibration: method {parts.calibrated.method!r} is not one of "
                                   f"{list(CALIBRATION_METHODS)}")
        self.task = task
        self.kind = "linear" if name in LINEAR_ESTIMATORS else "tree"
        self.estimator_name = name
        self.parts = parts
        typer = parts.typer
        self.numeric: tuple[str, ...] = tuple(typer.numeric)
        self.text: tuple[str, ...] = tuple(typer.text)
        self.datetime: tuple[str, ...] = tuple(typer.datetime)
        self.features: tuple[str, ...] = (*self.numeric, *self.datetime, *self.text)
        self._parts, self.width = _parts_of(parts)
        n_in = getattr(parts.estimator, "n_features_in_", self.width)
        if n_in != self.width:
            raise UnsupportedModel(f"model: the estimator takes {n_in} columns, the preprocessing outputs "
                                   f"{self.width}")
        calibrated = parts.calibrated is not None
        if self.kind == "linear":
            self._raw, self._proba = _linear(parts.estimator, name, task)
        else:
            self._raw, self._proba = _tree(parts.estimator, task, calibrated)

    # --- inputs -------------------------------------------------------------------------------------------

    def typed_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """FrameTyper's output for `frame` (the real FrameTyper), as one numpy array per column."""
        typed = self.parts.typer.transform(frame)
        out = {c: typed[c].to_numpy(dtype="float64") for c in self.parts.typer.numeric_outputs()}
        out.update({c: typed[c].to_numpy(dtype=object) for c in self.text})
        return out

    def typed_records(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray] | None:
        """What FrameTyper makes of `records` (JSON values; an absent key is missing), without a DataFrame; None
        when the model has datetime features or a value is of a type this path does not type (then use
        `typed_frame`): numbers int / float (not bool) or None; text str, bool or None."""
        if self.datetime:
            return None
        out: dict[str, np.ndarray] = {}
        if self.numeric:
            rows = [[r.get(c) for c in self.numeric] for r in records]
            if not {type(v) for row in rows for v in row} <= _NUMBER_TYPES:
                return None
            block = np.array(rows, dtype="float64").reshape(len(records), len(self.numeric))  # None → NaN
            out.update((c, block[:, j]) for j, c in enumerate(self.numeric))
        if self.text:
            rows = [[r.get(c) for c in self.text] for r in records]
            kinds = {type(v) for row in rows for v in row}
            if not kinds <= _TEXT_TYPES:
                return None
            if bool in kinds:  # FrameTyper types booleans as text: "True" / "False"
                rows = [[str(v) if type(v) is bool else v for v in row] for row in rows]
            block = np.empty((len(records), len(self.text)), dtype=object)
            if rows:
                block[:] = rows
            block[np.equal(block, None)] = math.nan
            out.update((c, block[:, j]) for j, c in enumerate(self.text))
        return out

    def typed_arrow(self, batch: Any) -> dict[str, np.ndarray] | None:
        """What FrameTyper makes of an Arrow table or record batch (batch scoring reads Parquet), without pandas;
        None when the model has datetime features or a column's Arrow type is not a plain number (numbers) or
        string (text): then use `typed_frame`."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.datetime:
            return None
        schema = batch.schema
        out: dict[str, np.ndarray] = {}
        for c in self.numeric:
            kind = schema.field(c).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                return None
            column = pc.cast(batch.column(c), pa.float64())
            out[c] = column.fill_null(math.nan).to_numpy(zero_copy_only=False) if column.null_count else \
                column.to_numpy(zero_copy_only=False)
        for c in self.text:
            kind = schema.field(c).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                return None
            values = batch.column(c).to_numpy(zero_copy_only=False)  # object: str, or None where null
            if batch.column(c).null_count:
                values[np.equal(values, None)] = math.nan
            out[c] = values
        return out

    # --- computing ----------------------------------------------------------------------------------------

    def matrix(self, typed: Mapping[str, np.ndarray]) -> np.ndarray:
        """The preprocessed matrix (what the model's ColumnTransformer outputs) from typed columns."""
        n = len(next(iter(typed.values()))) if typed else 0
        x = np.empty((n, self.width))
        for part in self._parts:
            block = np.column_stack([typed[c] for c in part.inputs]) if n else \
                np.empty((0, len(part.inputs)), dtype=object if part.text else "float64")
            for step in part.steps:
                block = step(block)
            x[:, part.out] = block
        return x

    def response_matrix(self, x: np.ndarray) -> np.ndarray:
        """The model's own response (predict_proba, or predict for regression) for a preprocessed matrix."""
        raw = self._raw(x)
        if self.parts.calibrated is not None:
            return calibrate(self.parts.calibrated, raw)
        return raw if self._proba is None else self._proba(raw)

    def response_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's own response for a frame of its inputs."""
        return self.response_matrix(self.matrix(self.typed_frame(frame)))

    def response_arrow(self, batch: Any) -> np.ndarray | None:
        """The model's own response for an Arrow table or record batch; None when `typed_arrow` cannot type it."""
        typed = self.typed_arrow(batch)
        return None if typed is None else self.response_matrix(self.matrix(typed))

    def response_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """The model's own response for JSON records; None when `typed_records` cannot type them."""
        typed = self.typed_records(records)
        return None if typed is None else self.response_matrix(self.matrix(typed))


def compile_model(model: Any, task: str) -> CompiledScorer:
    """The compiled scorer of a fitted crispflow model (not verified: see `verified_scorer`).

    :raises UnsupportedModel: naming the part that has no compiled form."""
    return CompiledScorer(unwrap(model), task)


# --- verification -------------------------------------------------------------------------------------------


def _typical(parts: Parts) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(a typical record from the model's own imputation statistics, known categories per text column)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    row: dict[str, Any] = {}
    categories: dict[str, list[str]] = {}
    for name, transformer, cols in parts.columns.transformers_:
        if name == "remainder" or transformer == "drop":
            continue
        steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
        for step in steps:
            if isinstance(step, SimpleImputer):
                for col, stat in zip(cols, np.asarray(step.statistics_, dtype=object).tolist(), strict=True):
                    row.setdefault(col, stat)
            elif isinstance(step, OneHotEncoder):
                for col, cats in zip(cols, step.categories_, strict=True):
                    categories[col] = [c for c in np.asarray(cats, dtype=object).tolist() if isinstance(c, str)]
    typer = parts.typer
    typical = {c: float(row[c]) if isinstance(row.get(c), int | float) else 0.0 for c in typer.numeric}
    typical.update({c: row[c] if isinstance(row.get(c), str) else UNSEEN for c in typer.text})
    typical.update({c: "2020-01-15T00:00:00" for c in typer.datetime})
    return typical, categories


def verification_records(parts: Parts) -> list[dict[str, Any]]:
    """Synthetic records: a typical row (imputation statistics), then per numeric column missing and extreme
    values, per datetime column missing, per text column missing, unseen and every known category, and one row
    with everything missing. Never a real row."""
    base, categories = _typical(parts)
    typer = parts.typer
    rows = [base]
    for col in typer.numeric:
        rows += [{**base, col: None}, *({**base, col: v} for v in _EXTREMES)]
    rows += [{**base, col: None} for col in typer.datetime]
    for col in typer.text:
        rows += [{**base, col: None}, {**base, col: UNSEEN}, *({**base, col: c} for c in categories.get(col, []))]
    rows.append(dict.fromkeys(base))
    return rows


def records_frame(parts: Parts, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """`records` as a model input frame with the dtypes the data phase publishes (float64, datetime, object)."""
    import pandas as pd

    typer = parts.typer
    data: dict[str, Any] = {}
    for col in typer.numeric:
        data[col] = np.array([math.nan if r.get(col) is None else float(r[col]) for r in records], dtype="float64")
    for col in typer.datetime:
        data[col] = pd.to_datetime(pd.Series([r.get(col) for r in records], dtype=object), format="ISO8601")
    for col in typer.text:
        data[col] = pd.Series([r.get(col) for r in records], dtype=object)
    return pd.DataFrame(data)


def _model_response(parts: Parts, task: str, frame: pd.DataFrame) -> np.ndarray:
    model = parts.model
    out = model.predict(frame) if task == "regression" else model.predict_proba(frame)
    return np.asarray(out, dtype="float64")


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    diff = np.abs(a - b)
    return float(np.max(diff, initial=0.0)) if np.all(np.isfinite(diff)) else math.inf


def verify(scorer: CompiledScorer, frames: Sequence[pd.DataFrame] = (), tolerance: float = TOLERANCE) -> float:
    """The largest |compiled - model| response difference over the generated verification records (through
    both the records and the frame path) and the rows of `frames`.

    :raises ScorerMismatch: above `tolerance` (or not finite)."""
    records = verification_records(scorer.parts)
    generated = records_frame(scorer.parts, records)
    expected = _model_response(scorer.parts, scorer.task, generated)
    by_records = scorer.response_records(records)
    gaps = [_gap(scorer.response_frame(generated), expected)]
    if by_records is not None:
        gaps.append(_gap(by_records, expected))
    for frame in frames:
        gaps.append(_gap(scorer.response_frame(frame), _model_response(scorer.parts, scorer.task, frame)))
    gap = max(gaps)
    if not gap <= tolerance:
        raise ScorerMismatch(f"compiled scorer: its output differs from the model's by {gap:.3g} on the "
                             f"verification rows (tolerance {tolerance:g})")
    return gap


def verified_scorer(model: Any, task: str, frames: Sequence[pd.DataFrame] = ()) -> tuple[CompiledScorer, float]:
    """(the compiled scorer of `model`, its largest difference from the model on the verification rows).

    :raises UnsupportedModel: the model has no compiled form.
    :raises ScorerMismatch: the compiled scorer does not agree with the model to `TOLERANCE`."""
    scorer = compile_model(model, task)
    return scorer, verify(scorer, frames)

