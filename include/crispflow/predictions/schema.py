"""The prediction store's schema: what a prediction and a feedback row hold, as Arrow types.

Prediction columns: ``request_id`` (string), ``ts`` (timestamp[us, UTC]), ``model``, ``version``, ``alias``
(string), ``served`` (bool), ``entity`` (string, nullable), ``score`` (float64, nullable), ``latency_ms``
(float64), ``status`` (string), then the task's own outputs, all nullable: ``predicted`` (string: the predicted
class label, multiclass), ``probabilities`` (list<float64>: the class probabilities in the model's class order,
multiclass), ``interval_low`` and ``interval_high`` (float64: the prediction interval, regression), then
``explanation`` (string, nullable: the record's explanation as compact JSON, only when the request asked for one
with ``/predict?explain=true``; like the ``feature.*`` columns it is personal data, under the same retention and
erasure). ``score`` is
P(positive) for binary, P(predicted class) for multiclass and the predicted value for regression. Then one column
per feature named ``feature.<name>``, typed as Arrow infers it from the batch (so drift monitoring reads features
columnar). A feature whose values in a batch have no common scalar type (e.g. ``True`` and ``1``, ``"a"`` and
``2``, an int beyond int64) is stored as strings (``str(v)``), dicts and lists as JSON strings; across files, a
feature stored with different types is read back as strings.
Feedback columns: ``request_id`` (string), ``label`` (float64: 0/1 for binary, the class code for multiclass, the
observed value for regression), ``ts`` (timestamp[us, UTC]), ``sender`` (string, nullable: the name of the
model-server token that sent the label).

Files written before these columns existed still read: a missing base column (e.g. ``sender``, ``explanation``)
is filled with nulls, and the int8 labels of older feedback files are cast to float64.

The writer turns row dicts into tables with :func:`prediction_table` / :func:`feedback_table`; readers cast files
back to :func:`arrow_schema` of the same fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    import pyarrow as pa

FEATURE_PREFIX = "feature."
PREDICTIONS = "predictions"  # the two kinds of rows, each its own folder under <root>/<model>/
FEEDBACK = "feedback"
PREDICTION_FIELDS: tuple[tuple[str, str], ...] = (
    ("request_id", "string"),
    ("ts", "ts"),
    ("model", "string"),
    ("version", "string"),
    ("alias", "string"),
    ("served", "bool"),
    ("entity", "string"),
    ("score", "float64"),
    ("latency_ms", "float64"),
    ("status", "string"),
    ("predicted", "string"),
    ("probabilities", "list_float64"),
    ("interval_low", "float64"),
    ("interval_high", "float64"),
    ("explanation", "string"),
)
FEEDBACK_FIELDS: tuple[tuple[str, str], ...] = (
    ("request_id", "string"),
    ("label", "float64"),
    ("ts", "ts"),
    ("sender", "string"),
)
PREDICTION_COLUMNS = tuple(name for name, _ in PREDICTION_FIELDS)
FEEDBACK_COLUMNS = tuple(name for name, _ in FEEDBACK_FIELDS)

_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")


class PredictionLogError(CrispflowError, ValueError):
    """Bad input to the prediction store (the message names the field and the rule), or a store it cannot read."""


# --- checks -----------------------------------------------------------------------------------------------------


def check_model(model: Any) -> str:
    """`model` if it is a registered model name that is safe as a path segment, else PredictionLogError."""
    if not isinstance(model, str) or not _MODEL_RE.match(model) or model.endswith((" ", ".")):
        raise PredictionLogError(
            f"model: must be a registered model name of letters, digits, '.', '_', '-' or "
            f"spaces, not starting with '.', got {model!r}"
        )
    return model


def utc(field: str, value: Any) -> datetime:
    """A timezone-aware datetime converted to UTC; PredictionLogError (naming `field`) for anything else."""
    if not isinstance(value, datetime):
        raise PredictionLogError(f"{field}: must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PredictionLogError(f"{field}: must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


# --- Arrow ------------------------------------------------------------------------------------------------------


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
        "int8": pa.int8(),
        "ts": pa.timestamp("us", tz="UTC"),
        "list_float64": pa.list_(pa.float64()),
    }[kind]


def arrow_schema(fields: Iterable[tuple[str, str]]) -> pa.Schema:
    """The Arrow schema of (name, kind) fields such as PREDICTION_FIELDS."""
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(kind)) for name, kind in fields])


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _typed_column(values: list[Any], kind: str) -> pa.Array:
    """A base column of a known type; strings accept anything (str() of it), other types must convert."""
    import pyarrow as pa

    try:
        return pa.array(values, _arrow_type(kind))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        if kind != "string":
            raise
        return pa.array([_as_text(v) for v in values], pa.string())


def _feature_column(values: list[Any]) -> pa.Array:
    """Arrow's inferred scalar type; nested or mixed values become strings (see the module docstring)."""
    import pyarrow as pa

    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return pa.array([_as_text(v) for v in values], pa.string())
    if pa.types.is_nested(array.type) or pa.types.is_dictionary(array.type):
        return pa.array([_as_text(v) for v in values], pa.string())
    return array


def prediction_table(rows: list[dict[str, Any]], model: str) -> pa.Table:
    """Prediction rows as a table: the base columns (``model`` defaults to `model`), then ``feature.<name>``
    columns (sorted) from each row's ``features`` dict."""
    import pyarrow as pa

    columns: dict[str, pa.Array] = {}
    for name, kind in PREDICTION_FIELDS:
        default = model if name == "model" else None
        columns[name] = _typed_column([r.get(name, default) for r in rows], kind)
    features = [r.get("features") or {} for r in rows]
    names = sorted({key for f in features for key in f})
    for key in names:
        columns[FEATURE_PREFIX + str(key)] = _feature_column([f.get(key) for f in features])
    return pa.table(columns)


def feedback_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Feedback rows as a table of FEEDBACK_COLUMNS."""
    import pyarrow as pa

    return pa.table({name: _typed_column([r.get(name) for r in rows], kind) for name, kind in FEEDBACK_FIELDS})
