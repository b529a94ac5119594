"""Exact, additive per-prediction explanations of a fitted crispflow model, grouped by the spec's feature columns.

Two methods, chosen by the final estimator:

| method | estimators | explained output (`space`) |
|---|---|---|
| `linear_exact` | LogisticRegression, Ridge, LinearRegression, Lasso, ElasticNet | decision_function / prediction |
| `tree_shap` | HistGradientBoosting*, GradientBoosting*, RandomForest*, ExtraTrees*, DecisionTree* | raw margin |

`linear_exact`: a feature's contribution is Σ coef_c · (x_c - reference_c) over its transformed columns (the
reference is the mean transformed training row, stored in the record); base = intercept + coef · reference.
`tree_shap`: shap's TreeExplainer (path-dependent TreeSHAP, exact for trees) on the transformed matrix, summed per
feature. Either way base + Σ contributions reproduces the model's own output in `space`, which is always computed
from the model (never from the explainer), so the additivity check is a real one.

Spaces: binary → the log-odds of the positive class (`decision_function`; before calibration when the model is
calibrated), multiclass → the predicted class's logit, regression → the prediction; estimators without a
decision function (random forests) explain the predicted probability. A calibrated model is explained before its
(monotone) calibration: `space` says so.

The record (`explainer_record`) is JSON and travels with the model version. It carries synthetic probe rows
(training medians / modes with missing and unseen variants, never a real row, no value of a PII column) and the
model's output on them: `LocalExplainer.build` re-derives the explainer from the hash-verified model and refuses
(ExplainerSelfTestFailed) a model whose explanations are not additive on the probe or whose output differs from
the one recorded, so wrong reasons are never served.

Serving: `score_and_explain` returns the model's own predict_proba / predict (`model_response`, equal to the
model's output: checked at build) and the explanations from one preprocessing and one evaluation of the estimator,
so asking for reasons adds only the attribution itself (`explain(..., transformed=transform(frame))` likewise).
Multiclass explanations name the explained class (`class`: the model's class code, i.e. the index in the spec's
class labels).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crispflow.errors import CrispflowError
from crispflow.model.compiled import LINEAR_ESTIMATORS, TREE_ESTIMATORS, UnsupportedModel, calibrate, unwrap
from crispflow.model.compiled import Parts as _Parts
from crispflow.model.compiled import transform as _transform
from crispflow.model.synthetic import probe_rows, rows_frame

if TYPE_CHECKING:
    from crispflow.model.features import FrameTyper
    from crispflow.spec import PipelineSpec

EXPLAINER_ARTIFACT = "explainer"  # MLflow artifact dir; the record is explainer/v<FORMAT>.json
FORMAT = 1
LINEAR, TREE = "linear_exact", "tree_shap"
TOLERANCE = {LINEAR: 1e-6, TREE: 1e-4}
RESPONSE_TOLERANCE = 1e-12  # model_response(transform(X)) vs the model's own predict_proba / predict
TASKS = ("binary", "multiclass", "regression")
RECORD_KEYS = ("format", "task", "method", "space", "space_note", "estimator", "features", "columns", "reference",
               "probe", "probe_output", "tolerance")

class ExplainerError(CrispflowError):
    """The model cannot be explained (unsupported shape or estimator) or the record does not fit it."""


class ExplainerSelfTestFailed(ExplainerError):
    """The explanations are not additive on the probe rows, or the model is not the one the record was made for."""


# --- the fitted model's parts -----------------------------------------------------------------------------


def _unwrap(model: Any) -> _Parts:
    """The model's parts (crispflow.model.compiled.unwrap); ExplainerError for a model of another shape."""
    try:
        return unwrap(model)
    except UnsupportedModel as exc:
        raise ExplainerError(str(exc)) from None


def _method_space(task: str, parts: _Parts) -> tuple[str, str, str]:
    """(method, space, space_note) for the task and the model's final estimator; ExplainerError if unsupported."""
    if task not in TASKS:
        raise ExplainerError(f"task: {task!r} is not one of {list(TASKS)}")
    name = parts.estimator_name
    kind = LINEAR_ESTIMATORS.get(name) or TREE_ESTIMATORS.get(name)
    if kind is None:
        supported = sorted({*LINEAR_ESTIMATORS, *TREE_ESTIMATORS})
        raise ExplainerError(f"model: estimator {name} has no exact explainer (supported: {supported})")
    if (kind == "regressor") != (task == "regression"):
        raise ExplainerError(f"model: estimator {name} is a {kind}, the task is {task}")
    method = LINEAR if name in LINEAR_ESTIMATORS else TREE
    if task == "regression":
        return method, "prediction", "the model's prediction, in the target's units"
    has_margin = hasattr(parts.estimator, "decision_function")
    cal = parts.calibrated is not None
    when = " before calibration (the served probability is a monotone calibration of it)" if cal else ""
    suffix = "_uncalibrated" if cal else ""
    if task == "binary":
        if has_margin:
            return method, f"log_odds{suffix}", f"log-odds of the positive class{when}"
        return method, f"probability{suffix}", f"the positive class's probability{when}"
    if has_margin:
        return method, f"class_logit{suffix}", f"the predicted class's logit (softmax input){when}"
    return method, f"class_probability{suffix}", f"the predicted class's probability{when}"


# --- transformed columns back to the spec's features ------------------------------------------------------


def _source_names(typer: FrameTyper) -> dict[str, str]:
    """FrameTyper output column -> the spec feature it comes from (datetime parts to their column)."""
    from crispflow.model.features import DATETIME_PARTS

    owner = {c: c for c in (*typer.numeric, *typer.text)}
    owner.update({f"{c}__{p}": c for c in typer.datetime for p in DATETIME_PARTS})
    return owner


def _kept(imputer: Any, cols: list[str]) -> list[str]:
    """The input columns a fitted SimpleImputer outputs (it drops all-missing ones unless keep_empty_features)."""
    if imputer.keep_empty_features:
        return list(cols)
    stats = np.asarray(imputer.statistics_, dtype=object)
    return [c for c, s in zip(cols, stats, strict=True) if not (isinstance(s, float) and math.isnan(s))]


def _onehot_counts(encoder: Any, n_inputs: int) -> list[int]:
    """Output columns per input feature of a fitted OneHotEncoder (frequent categories, one infrequent column when
    some are infrequent, minus a dropped one), checked against get_feature_names_out."""
    cats = encoder.categories_
    if len(cats) != n_inputs:
        raise ExplainerError(f"model: the one-hot encoder has {len(cats)} inputs, expected {n_inputs}")
    try:
        infrequent = list(encoder.infrequent_categories_)
    except AttributeError:  # no min_frequency / max_categories: nothing is infrequent
        infrequent = [None] * len(cats)
    drop = encoder.drop_idx_ if encoder.drop_idx_ is not None else [None] * len(cats)
    counts = []
    for c, rare, dropped in zip(cats, infrequent, drop, strict=True):
        n_rare = 0 if rare is None else len(rare)
        counts.append(len(c) - n_rare + (1 if n_rare else 0) - (0 if dropped is None else 1))
    if sum(counts) != len(encoder.get_feature_names_out()):
        raise ExplainerError(f"model: one-hot column counts {counts} do not add up to the encoder's "
                             f"{len(encoder.get_feature_names_out())} output columns")
    return counts


def _part_owners(name: str, transformer: Any, cols: list[str]) -> list[str]:
    """The input column behind each output column of one fitted ColumnTransformer part."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    owners = list(cols)
    for step in steps:
        if isinstance(step, SimpleImputer):
            kept = _kept(step, owners)
            indicator = step.indicator_ if step.add_indicator else None
            extra = [owners[j] for j in indicator.features_] if indicator is not None else []
            owners = kept + extra
        elif isinstance(step, OneHotEncoder):
            counts = _onehot_counts(step, len(owners))
            owners = [c for c, n in zip(owners, counts, strict=True) for _ in range(n)]
        elif not isinstance(step, StandardScaler):
            raise ExplainerError(f"model: column transformer part {name!r} has a {type(step).__name__} step; "
                                 "only SimpleImputer, StandardScaler and OneHotEncoder map back to features exactly")
    return owners


def _column_owners(parts: _Parts) -> list[str]:
    """The spec feature behind every column of the transformed matrix, in matrix order."""
    source = _source_names(parts.typer)
    ct = parts.columns
    width = 0
    owner: dict[int, str] = {}
    for name, transformer, cols in ct.transformers_:
        where = ct.output_indices_[name]
        n = where.stop - where.start
        if name == "remainder" or transformer == "drop":
            if n:
                raise ExplainerError(f"model: column transformer part {name!r} outputs {n} columns it does not "
                                     "map to features")
            continue
        unknown = [c for c in cols if c not in source] if not isinstance(cols, str) else [cols]
        if unknown:
            raise ExplainerError(f"model: column transformer part {name!r} reads columns {unknown} that are not "
                                 "the FrameTyper's outputs")
        owners = _part_owners(name, transformer, list(cols))
        if len(owners) != n:
            raise ExplainerError(f"model: column transformer part {name!r} outputs {n} columns, the mapping back "
                                 f"to features accounts for {len(owners)}")
        owner.update({where.start + i: source[c] for i, c in enumerate(owners)})
        width = max(width, where.stop)
    if sorted(owner) != list(range(width)):
        raise ExplainerError("model: the column transformer's outputs do not tile its matrix")
    return [owner[i] for i in range(width)]


def _model_features(typer: FrameTyper) -> set[str]:
    return {*typer.numeric, *typer.text, *typer.datetime}


def _group_matrix(owners: list[str], features: list[str]) -> np.ndarray:
    """(width, n_features) 0/1 matrix: transformed column c belongs to feature j."""
    index = {f: j for j, f in enumerate(features)}
    groups = np.zeros((len(owners), len(features)))
    groups[np.arange(len(owners)), [index[o] for o in owners]] = 1.0
    return groups


# --- probe rows -------------------------------------------------------------------------------------------


def _probe_frame(typer: FrameTyper, features: list[str], probe: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The probe records as a frame with the dtypes the data phase publishes."""
    try:
        return rows_frame(typer, features, probe, what="record.probe")
    except ValueError as exc:
        raise ExplainerError(str(exc)) from None


# --- JSON -------------------------------------------------------------------------------------------------


def record_digest(record: Mapping[str, Any]) -> str:
    """sha256 hex of the record's canonical JSON (sorted keys, compact separators, no NaN)."""
    try:
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ExplainerError(f"record: not canonical JSON ({exc})") from None
    return hashlib.sha256(canonical.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """A raw input value as JSON: missing (None, NaN, NaT, pd.NA) and non-finite numbers -> None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date | pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


# --- the explainer ----------------------------------------------------------------------------------------


def _column_position(frame: pd.DataFrame, name: str) -> int:
    """The position of column `name` in `frame` (cell reads by position are the cheap ones in pandas)."""
    position = frame.columns.get_loc(name)
    if not isinstance(position, int | np.integer):
        raise ExplainerError(f"frame: column {name!r} appears more than once")
    return int(position)


def _is_number_list(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


class LocalExplainer:
    """Exact additive explanations of one fitted model: build it with `build` (from a record) or through
    `explainer_record` (which makes the record)."""

    method: str
    space: str
    features: list[str]

    def __init__(self, task: str, parts: _Parts, method: str, space: str, features: list[str],
                 reference: Sequence[float], tolerance: float) -> None:
        owners = _column_owners(parts)
        if set(features) != _model_features(parts.typer) or len(set(features)) != len(features):
            raise ExplainerError(f"features: {sorted(features)} are not the model's input columns "
                                 f"{sorted(_model_features(parts.typer))}")
        self.task, self.method, self.space, self.features = task, method, space, list(features)
        self.tolerance = float(tolerance)
        self._parts = parts
        self._estimator = parts.estimator
        self._groups = _group_matrix(owners, self.features)
        self._width = len(owners)
        self._margin = task != "regression" and hasattr(parts.estimator, "decision_function")
        classes = getattr(parts.estimator, "classes_", None)
        self._classes = None if classes is None else np.asarray(classes)
        if task == "binary" and (self._classes is None or list(self._classes) != [False, True]):
            raise ExplainerError(f"model: a binary model's classes must be [False, True], got {classes}")
        self._reference = np.asarray(reference, dtype="float64")
        self._shap: Any = None
        self.probe: pd.DataFrame | None = None  # the record's probe rows, once they passed the self-test
        if method == LINEAR:
            self._init_linear()
        else:
            self._init_tree()

    def _init_linear(self) -> None:
        if self._reference.shape != (self._width,):
            raise ExplainerError(f"record.reference: linear_exact needs one value per transformed column "
                                 f"({self._width}), got {self._reference.size}")
        coef = np.asarray(self._estimator.coef_, dtype="float64")
        intercept = np.asarray(self._estimator.intercept_, dtype="float64").reshape(-1)
        coef = coef.reshape(-1, coef.shape[-1]) if coef.ndim > 1 else coef.reshape(1, -1)
        if coef.shape[1] != self._width or intercept.size != coef.shape[0]:
            raise ExplainerError(f"model: coefficients of shape {coef.shape} do not fit {self._width} columns")
        if self.task != "multiclass" and coef.shape[0] != 1:
            raise ExplainerError(f"model: a {self.task} linear model must have one coefficient row, got "
                                 f"{coef.shape[0]}")
        self._coef, self._base = coef, intercept + coef @ self._reference

    def _init_tree(self) -> None:
        if self._reference.size:
            raise ExplainerError("record.reference: tree_shap takes no reference (path-dependent TreeSHAP uses "
                                 "the trees' own cover), expected []")
        n_in = getattr(self._estimator, "n_features_in_", self._width)
        if n_in != self._width:
            raise ExplainerError(f"model: the estimator takes {n_in} columns, the preprocessing outputs "
                                 f"{self._width}")
        with warnings.catch_warnings():  # shap's plotting module warns about matplotlib deprecations on import
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            import shap

        try:
            self._shap = shap.TreeExplainer(self._estimator, feature_perturbation="tree_path_dependent")
        except Exception as exc:
            raise ExplainerError(f"model: shap cannot explain {self._parts.estimator_name}: "
                                 f"{type(exc).__name__}: {exc}") from None
        self._expected = np.asarray(self._shap.expected_value, dtype="float64").reshape(-1)

    # --- construction from a record -----------------------------------------------------------------------

    @classmethod
    def build(cls, spec_task: str, model: Any, record: Mapping[str, Any]) -> LocalExplainer:
        """The explainer of the (hash-verified) fitted `model` described by `record`, after its self-test.

        :raises ExplainerError: the record is malformed, or does not fit the model (features, method, space,
            estimator, reference) or the task.
        :raises ExplainerSelfTestFailed: explanations of the probe rows are not additive within the tolerance,
            or the model's output on them is not the recorded one (the record was made for another model).
        """
        _check_record(record)
        parts = _unwrap(model)
        method, space, _ = _method_space(spec_task, parts)
        if record["task"] != spec_task:
            raise ExplainerError(f"record.task: the record was made for a {record['task']} model, not {spec_task}")
        if record["method"] != method:
            raise ExplainerError(f"record.method: {record['method']!r} does not fit the model's estimator "
                                 f"{parts.estimator_name} (it needs {method!r})")
        if record["space"] != space:
            raise ExplainerError(f"record.space: {record['space']!r}, but this model is explained in {space!r}")
        if record["estimator"] != parts.estimator_name:
            raise ExplainerError(f"record.estimator: {record['estimator']} was recorded, the model's estimator "
                                 f"is {parts.estimator_name}")
        if record["tolerance"] > TOLERANCE[method]:
            raise ExplainerError(f"record.tolerance: {record['tolerance']} is looser than {method}'s "
                                 f"{TOLERANCE[method]}")
        explainer = cls(spec_task, parts, method, space, list(record["features"]), record["reference"],
                        record["tolerance"])
        if record["columns"] != explainer._width:
            raise ExplainerError(f"record.columns: {record['columns']} transformed columns were recorded, the "
                                 f"model has {explainer._width}")
        explainer._verify(_probe_frame(parts.typer, explainer.features, record["probe"]), record["probe_output"])
        return explainer

    def _verify(self, probe: pd.DataFrame, recorded: Sequence[float] | None) -> np.ndarray:
        """The load-time self-test on the probe rows; returns the explained output."""
        try:
            transformed = self.transform(probe)
        except Exception as exc:
            raise ExplainerError(f"record.probe: the model cannot transform the probe rows: "
                                 f"{type(exc).__name__}: {exc}") from None
        base, contributions, output, _ = self._arrays(self._matrix(transformed))
        self._check_additive(base, contributions, output)
        if recorded is not None:
            expected = np.asarray(recorded, dtype="float64")
            if expected.shape != output.shape:
                raise ExplainerSelfTestFailed(f"record.probe_output: {expected.size} values for {output.size} "
                                              "probe rows")
            gap = float(np.max(np.abs(output - expected)))
            if not gap <= self.tolerance:
                raise ExplainerSelfTestFailed(
                    f"self-test: the model's output on the probe rows differs from the recorded one by {gap:.3g} "
                    f"(tolerance {self.tolerance:g}): the record was made for another model")
        served = self._served(probe)
        gap = float(np.max(np.abs(self.model_response(transformed) - served)))
        if not gap <= RESPONSE_TOLERANCE:
            raise ExplainerSelfTestFailed(f"self-test: model_response differs from the model's own output by "
                                          f"{gap:.3g} (tolerance {RESPONSE_TOLERANCE:g})")
        self.probe = probe
        return output

    def _served(self, frame: pd.DataFrame) -> np.ndarray:
        model = self._parts.model
        if self.task == "regression":
            return np.asarray(model.predict(frame), dtype="float64")
        return np.asarray(model.predict_proba(frame), dtype="float64")

    # --- computing ----------------------------------------------------------------------------------------

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's preprocessing of `frame` (the spec's feature columns), as the model itself runs it."""
        return _transform(self._parts, frame)

    def model_response(self, transformed: np.ndarray) -> np.ndarray:
        """What the served model returns for the rows of `transformed` (= `transform(frame)`): predict_proba
        (classification, columns in the model's classes_ order) or predict (regression). Equal to the model's own
        output on `frame` (checked at build), so a server transforms once for both prediction and reasons."""
        x = self._matrix(transformed)
        return self._response(x, self._raw(x))

    def _matrix(self, transformed: np.ndarray) -> np.ndarray:
        x = np.asarray(transformed, dtype="float64")
        if x.ndim != 2 or x.shape[1] != self._width:
            raise ExplainerError(f"transformed: expected a (n, {self._width}) matrix, got {x.shape}")
        return x

    def _raw(self, x: np.ndarray) -> np.ndarray:
        """The estimator's own output for every class: decision_function, predict_proba or predict."""
        est = self._estimator
        if self.task == "regression":
            return np.asarray(est.predict(x), dtype="float64")
        if self._margin:
            return np.asarray(est.decision_function(x), dtype="float64")
        return np.asarray(est.predict_proba(x), dtype="float64")

    def _response(self, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The served model's predict_proba / predict from the estimator's raw output `raw` on `x`."""
        cal = self._parts.calibrated
        if self.task == "regression":
            return raw
        if cal is None:
            return np.asarray(self._estimator.predict_proba(x), dtype="float64")
        if cal.method not in ("sigmoid", "isotonic"):  # sklearn's own code on the estimator behind the pipeline
            view = copy.copy(cal)
            view.estimator = self._estimator
            return np.asarray(view.predict_proba(x), dtype="float64")
        return calibrate(cal, raw)

    def _classes_explained(self, x: np.ndarray, raw: np.ndarray, response: np.ndarray | None) -> np.ndarray | None:
        """Multiclass: per row the column (in classes_ order) of the class the served model predicts."""
        if self.task != "multiclass":
            return None
        if self._parts.calibrated is None:  # softmax / probabilities: the served argmax is the raw argmax
            return np.argmax(raw, axis=1)
        return np.argmax(self._response(x, raw) if response is None else response, axis=1)

    def _arrays(self, x: np.ndarray, raw: np.ndarray | None = None, response: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(base, contributions, output, explained class column or None) for a transformed matrix."""
        raw = self._raw(x) if raw is None else raw
        cls = self._classes_explained(x, raw, response)
        rows = np.arange(len(x))
        if self.method == LINEAR:
            pick = np.zeros(len(x), dtype=np.int64) if cls is None else cls
            base = self._base[pick]
            per_column = self._coef[pick] * (x - self._reference)
        else:
            values = np.asarray(self._shap.shap_values(x, check_additivity=False), dtype="float64")
            pick = self._shap_pick(cls, len(x), values.ndim)
            if values.ndim == 3:
                per_column, base = values[rows, :, pick], self._expected[pick]
            else:
                per_column, base = values, np.full(len(x), self._expected[0])
        if raw.ndim == 1:
            output = raw
        elif cls is not None:
            output = raw[rows, cls]
        else:
            output = raw[:, -1]  # binary probabilities: the positive class (classes_ [False, True])
        return base, per_column @ self._groups, output, cls

    def _shap_pick(self, cls: np.ndarray | None, n: int, ndim: int) -> np.ndarray:
        """Which output of a multi-output TreeSHAP to explain per row: the predicted class, or the positive one."""
        if cls is not None:
            return cls
        if ndim == 3 and self._expected.size != 2 and self.task == "binary":
            raise ExplainerError(f"model: TreeSHAP gives {self._expected.size} outputs for a binary model")
        return np.full(n, self._expected.size - 1, dtype=np.int64)

    def contributions(self, frame: pd.DataFrame, *, transformed: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(base (n,), contributions (n, len(features)) in `features` order, output (n,) the model's own output
        in `space`); base + contributions.sum(1) == output within the tolerance. Pass `transformed`
        (= `transform(frame)`) to skip the preprocessing."""
        x = self._matrix(self.transform(frame) if transformed is None else transformed)
        base, contributions, output, _ = self._arrays(x)
        return base, contributions, output

    def self_test(self, frame: pd.DataFrame) -> float:
        """The largest additivity error |base + sum of contributions - output| over the rows of `frame`.

        :raises ExplainerSelfTestFailed: when it exceeds the tolerance (or is not finite)."""
        base, contributions, output, _ = self._arrays(self._matrix(self.transform(frame)))
        return self._check_additive(base, contributions, output)

    def _check_additive(self, base: np.ndarray, contributions: np.ndarray, output: np.ndarray) -> float:
        error = float(np.max(np.abs(base + contributions.sum(axis=1) - output), initial=0.0))
        if not error <= self.tolerance:
            raise ExplainerSelfTestFailed(f"self-test: the {self.method} explanations are not additive: max "
                                          f"|base + sum - output| = {error:.3g} > tolerance {self.tolerance:g}")
        return error

    def explain(self, frame: pd.DataFrame, top_k: int, *, transformed: np.ndarray | None = None
                ) -> list[dict[str, Any]]:
        """Per row of `frame`: {"method", "space", "base_value", "contributions": top_k of {"feature", "value"
        (the row's raw input, JSON), "contribution"} by |contribution| descending, "other" (the sum of the rest),
        "check": {"output", "abs_error"}}, plus "class" (the explained class code) for multiclass models.
        Pass `transformed` (= `transform(frame)`) to skip the preprocessing."""
        self._check_top_k(top_k)
        x = self._matrix(self.transform(frame) if transformed is None else transformed)
        return self._rows(frame, top_k, *self._arrays(x))

    def score_and_explain(self, frame: pd.DataFrame, top_k: int, *, transformed: np.ndarray | None = None
                          ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(`model_response` of the rows, their `explain`) from one preprocessing and one evaluation of the
        estimator: what a server answering `explain=true` needs, at the cost of the explanation alone."""
        self._check_top_k(top_k)
        x = self._matrix(self.transform(frame) if transformed is None else transformed)
        raw = self._raw(x)
        response = self._response(x, raw)
        return response, self._rows(frame, top_k, *self._arrays(x, raw, response))

    def _check_top_k(self, top_k: Any) -> None:
        n = len(self.features)
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k <= n:
            raise ExplainerError(f"top_k: must be an integer in [1, {n}], got {top_k!r}")

    def _rows(self, frame: pd.DataFrame, top_k: int, base: np.ndarray, contributions: np.ndarray,
              output: np.ndarray, cls: np.ndarray | None) -> list[dict[str, Any]]:
        if len(frame) != len(base):
            raise ExplainerError(f"transformed: {len(base)} rows for a frame of {len(frame)}")
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")
        positions: dict[int, int] = {}  # frame column of each shown feature, looked up once
        out = []
        for i in range(len(base)):
            top, rest = order[i, :top_k], order[i, top_k:]
            items = []
            for j in top.tolist():
                if j not in positions:
                    positions[j] = _column_position(frame, self.features[j])
                items.append({"feature": self.features[j], "value": _jsonable(frame.iat[i, positions[j]]),
                              "contribution": float(contributions[i, j])})
            row: dict[str, Any] = {
                "method": self.method,
                "space": self.space,
                "base_value": float(base[i]),
                "contributions": items,
                "other": float(contributions[i, rest].sum()),
                "check": {"output": float(output[i]),
                          "abs_error": float(abs(base[i] + contributions[i].sum() - output[i]))},
            }
            if cls is not None:
                row["class"] = _jsonable(self._classes[cls[i]])
            out.append(row)
        return out


def _check_record(record: Mapping[str, Any]) -> None:
    """The record's shape: every key, of the right type (ExplainerError naming the field)."""
    if not isinstance(record, Mapping):
        raise ExplainerError(f"record: must be a mapping, got {type(record).__name__}")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ExplainerError(f"record: missing keys {missing}")
    if record["format"] != FORMAT:
        raise ExplainerError(f"record.format: {record['format']!r} is not the supported format {FORMAT}")
    if record["method"] not in TOLERANCE:
        raise ExplainerError(f"record.method: {record['method']!r} is not one of {sorted(TOLERANCE)}")
    features = record["features"]
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features) \
            or len(set(features)) != len(features):
        raise ExplainerError("record.features: must be a non-empty list of distinct column names")
    tolerance = record["tolerance"]
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance < math.inf:
        raise ExplainerError(f"record.tolerance: must be a positive number, got {tolerance!r}")
    if isinstance(record["columns"], bool) or not isinstance(record["columns"], int):
        raise ExplainerError(f"record.columns: must be an integer, got {record['columns']!r}")
    for key in ("reference", "probe_output"):
        if not _is_number_list(record[key]):
            raise ExplainerError(f"record.{key}: must be a list of finite numbers")
    if not isinstance(record["probe"], list):
        raise ExplainerError("record.probe: must be a list of rows")


def explainer_record(spec: PipelineSpec, model: Any, train: pd.DataFrame) -> dict[str, Any]:
    """The JSON record from which `LocalExplainer.build` re-derives the explainer of the fitted `model`.

    Keys: format, task, method, space, space_note, estimator, features (the spec's feature columns), columns
    (transformed width), reference (linear: the mean transformed training row; tree: []), probe (synthetic rows,
    see `crispflow.model.synthetic.probe_rows`), probe_output (the model's output on them, in `space`),
    tolerance (1e-6 linear, 1e-4 tree).

    :raises ExplainerError: the model is not explainable, its inputs are not the spec's features, or the
        explanations of the probe rows are not additive (ExplainerSelfTestFailed).
    """
    from crispflow.model.features import features as feature_frame

    parts = _unwrap(model)
    method, space, note = _method_space(spec.task, parts)
    names = list(spec.feature_columns)
    if set(names) != _model_features(parts.typer):
        raise ExplainerError(f"features: the spec's feature columns {sorted(names)} are not the model's inputs "
                             f"{sorted(_model_features(parts.typer))}")
    X = feature_frame(spec, train)
    if X.empty:
        raise ExplainerError("train: no rows to take the reference and probe values from")
    reference: list[float] = []
    if method == LINEAR:
        reference = _transform(parts, X).mean(axis=0).tolist()
    explainer = LocalExplainer(spec.task, parts, method, space, names, reference, TOLERANCE[method])
    probe = probe_rows(parts.typer, X, names, set(spec.pii_columns))
    output = explainer._verify(_probe_frame(parts.typer, names, probe), None)
    record = {
        "format": FORMAT,
        "task": spec.task,
        "method": method,
        "space": space,
        "space_note": note,
        "estimator": parts.estimator_name,
        "features": names,
        "columns": explainer._width,
        "reference": reference,
        "probe": probe,
        "probe_output": output.tolist(),
        "tolerance": TOLERANCE[method],
    }
    record_digest(record)  # JSON-able, no NaN
    return record
