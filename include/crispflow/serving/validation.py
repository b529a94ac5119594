"""Request validation against the model signature, and the model input frame built from validated records.

Every problem is reported per field as `{"record": i, "field": name, "rule": rule, "message": text}`; bad input
is always a 4xx, never a 500. Rules:

- `json` (400): the body is not JSON (or not UTF-8); `content_type` (415); `max_bytes` / `max_records` (413).
- `body`, `records`: the body must be `{"records": [record, ...]}` (at least one) or `{"record": {...}}`.
- `type`: a value of the wrong JSON type for the signature's column type (double/float: a number; long/integer:
  an integral number; string: text; boolean: true/false; datetime: ISO-8601 text). Booleans are not numbers.
- `finite`: NaN or ±Infinity (the JSON extensions `NaN`, `Infinity`, or a literal too large for a double).
- `range`: an integer outside the column's integer type.
- `missing` / `required`: a field absent or null although the signature marks the column required. A column the
  signature marks optional (the training example had nulls there) accepts null or absence: the model pipeline
  imputes it.
- `extra`: a field that is not a model input (the policy's entity key is allowed: it names the entity).

Query parameters of `/predict` (`explain_options`, then `ExplainRequest.resolve` against the answering model):

- `explain` (field `explain`): `true`/`false`/`1`/`0` (any case); rule `boolean` for anything else, `single` when
  given twice. Absent means false.
- `top_k` (field `top_k`): an integer in [1, the answering model's number of features] (rules `integer`,
  `range`); default 5, capped at the number of features. Given without `explain=true` it is refused (rule
  `requires_explain`) rather than silently ignored: a client that sends it expects reasons.
- an explained request holds at most `max_explained_records` records (field `records`, rule
  `max_explained_records`; default 100).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    import pandas as pd

MAX_REPORTED = 100  # field errors listed per response; the count of the rest is given
_INT_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
NUMERIC = frozenset({"double", "float"})
INTEGRAL = frozenset({"long", "integer"})
DEFAULT_TOP_K = 5  # contributions listed per explained record when `top_k` is not given
MAX_EXPLAINED_RECORDS = 100
_ABSENT = object()
# the value types `FieldSpec.check` always accepts for a kind (a float still has to be finite, an int in range)
_PLAIN = {"double": frozenset({float, int}), "float": frozenset({float, int}), "long": frozenset({int}),
          "integer": frozenset({int}), "string": frozenset({str}), "binary": frozenset({str}),
          "boolean": frozenset({bool})}
_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}
_DIGITS = re.compile(r"[0-9]{1,9}")


def problem(record: int | None, field: str | None, rule: str, message: str) -> dict[str, Any]:
    return {"record": record, "field": field, "rule": rule, "message": message}


class PayloadError(CrispflowError):
    """A request the server refuses: `status` (4xx) and field-level `details`."""

    def __init__(self, status: int, details: list[dict[str, Any]]) -> None:
        shown = details[:MAX_REPORTED]
        if len(details) > MAX_REPORTED:
            shown.append(problem(None, None, "truncated", f"{len(details) - MAX_REPORTED} more problems not shown"))
        super().__init__("; ".join(f"{d['field'] or 'body'}: {d['message']} [rule: {d['rule']}]" for d in shown[:3]))
        self.status = status
        self.details = shown

    @property
    def rules(self) -> list[str]:
        return [d["rule"] for d in self.details]


@dataclass(frozen=True)
class FieldSpec:
    """One model input column: its name, MLflow type name and whether a value is required."""

    name: str
    kind: str  # double, float, long, integer, string, boolean, datetime, binary, or "any"
    required: bool = True

    def check(self, value: Any) -> tuple[str, str] | None:
        """(rule, message) if `value` is not acceptable for this column, else None."""
        if value is None:
            return ("required", f"null is not allowed: the model signature marks {self.name!r} required") \
                if self.required else None
        kind, got = self.kind, type(value)
        if kind in NUMERIC:
            if got is float:
                return None if math.isfinite(value) else ("finite", f"expected a finite {kind}, got {value!r}")
            return None if got is int else ("type", f"expected {kind}, got {_json_type(value)}")
        if kind in INTEGRAL:
            if got is float:
                if not math.isfinite(value):
                    return "finite", f"expected a finite {kind}, got {value!r}"
                if not value.is_integer():
                    return "type", f"expected {kind}, got a fractional number {value!r}"
                value = int(value)
            elif got is not int:
                return "type", f"expected {kind}, got {_json_type(value)}"
            low, high = _INT_RANGE[kind]
            return None if low <= value <= high else ("range", f"{value} is outside the range of {kind}")
        if kind in ("string", "binary"):
            return None if got is str else ("type", f"expected string, got {_json_type(value)}")
        if kind == "boolean":
            return None if got is bool else ("type", f"expected boolean, got {_json_type(value)}")
        if kind == "datetime":
            if got is not str:
                return "type", f"expected an ISO-8601 datetime string, got {_json_type(value)}"
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return "type", f"expected an ISO-8601 datetime string, got {value[:40]!r}"
        return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


class InputSchema:
    """The model's input columns (from its MLflow signature); validates records and builds the input frame.

    `fields` empty means the model has no signature: records must still be objects, but fields are not checked.
    """

    def __init__(self, fields: Sequence[FieldSpec]) -> None:
        self.fields = tuple(fields)
        self.names = tuple(f.name for f in self.fields)
        self._by_name = {f.name: f for f in self.fields}
        plain = all(f.kind in _PLAIN for f in self.fields)
        self._plain = tuple((f.name, _PLAIN[f.kind], f.required, _INT_RANGE.get(f.kind)) for f in self.fields) \
            if plain else None

    @classmethod
    def from_signature(cls, signature: Any) -> InputSchema:
        """From an `mlflow.models.ModelSignature` (None → no checks). Non-scalar column types accept anything."""
        if signature is None or signature.inputs is None:
            return cls(())
        fields = []
        for col in signature.inputs.inputs:
            kind = getattr(getattr(col, "type", None), "name", "any")
            fields.append(FieldSpec(str(col.name), kind if isinstance(kind, str) else "any",
                                    bool(getattr(col, "required", True))))
        return cls(fields)

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "type": f.kind, "required": f.required} for f in self.fields]

    def check_record(self, index: int, record: Any, allowed_extra: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The problems of one record (empty when it is valid)."""
        if not isinstance(record, dict):
            return [problem(index, None, "type", f"expected a JSON object, got {_json_type(record)}")]
        if not self.fields or self._valid_plain(record, allowed_extra):
            return []
        found: list[dict[str, Any]] = []
        present = 0
        for spec in self.fields:
            if spec.name not in record:
                if spec.required:
                    found.append(problem(index, spec.name, "missing",
                                         f"required field {spec.name!r} ({spec.kind}) is missing"))
                continue
            present += 1
            bad = spec.check(record[spec.name])
            if bad is not None:
                found.append(problem(index, spec.name, *bad))
        if present < len(record):  # some keys are not model inputs
            extra = [k for k in record if k not in self._by_name and k not in allowed_extra]
            found.extend(problem(index, str(k)[:100], "extra", f"{str(k)[:100]!r} is not a model input")
                         for k in extra)
        return found

    def _valid_plain(self, record: dict[str, Any], allowed_extra: Iterable[str]) -> bool:
        """True if `record` certainly passes `FieldSpec.check` on every field and has no extra key: the common case
        for signatures of numbers, strings and booleans, decided without building a problem list. False means
        "check field by field" (`check_record` then reports what is wrong, if anything)."""
        if self._plain is None:
            return False
        present = 0
        for name, types, required, bounds in self._plain:
            value = record.get(name, _ABSENT)
            kind = type(value)
            if kind in types:
                if kind is float:
                    if value - value != 0.0:  # NaN or ±Infinity
                        return False
                elif bounds is not None and kind is int and not bounds[0] <= value <= bounds[1]:
                    return False
                present += 1
            elif value is None:
                if required:
                    return False
                present += 1
            elif value is not _ABSENT or required:
                return False
        return present == len(record) or all(k in self._by_name or k in allowed_extra for k in record)

    def frame(self, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """The model input: one column per signature field, in signature order, built column by column."""
        import numpy as np
        import pandas as pd

        if not self.fields:
            return pd.DataFrame.from_records(list(records))
        columns: dict[str, Any] = {}
        for spec in self.fields:
            values = [r.get(spec.name) for r in records]
            if spec.kind in NUMERIC:
                columns[spec.name] = np.array([math.nan if v is None else v for v in values], dtype="float64")
            elif spec.kind in INTEGRAL:
                has_null = any(v is None for v in values)
                columns[spec.name] = np.array([math.nan if v is None else v for v in values],
                                              dtype="float64" if has_null else "int64")
            elif spec.kind == "datetime":
                columns[spec.name] = pd.to_datetime(values, format="ISO8601", utc=True)
            elif spec.kind in ("string", "binary"):
                columns[spec.name] = [math.nan if v is None else v for v in values]
            else:
                columns[spec.name] = values
        return pd.DataFrame(columns)


def check_content_type(content_type: str | None) -> None:
    """JSON only: `application/json` (any parameters, e.g. charset) or a `+json` media type."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise PayloadError(415, [problem(None, None, "content_type",
                                         f"expected Content-Type application/json, got {media or 'none'!r}")])


def parse_json(body: bytes) -> Any:
    """The decoded JSON body; 400 (rule `json`) if it is not UTF-8 JSON. NaN/Infinity decode to floats, which the
    field checks then refuse (rule `finite`)."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(400, [problem(None, None, "json", f"the body is not UTF-8: {exc.reason}")]) from None
    except json.JSONDecodeError as exc:
        raise PayloadError(400, [problem(None, None, "json", f"malformed JSON: {exc.msg} at line {exc.lineno} "
                                                             f"column {exc.colno}")]) from None
    except RecursionError:
        raise PayloadError(400, [problem(None, None, "json", "malformed JSON: nested too deeply")]) from None


def records_of(payload: Any, max_records: int) -> list[Any]:
    """The records of a `/predict` body: `{"records": [...]}` (1 to `max_records`) or `{"record": {...}}`."""
    if not isinstance(payload, dict):
        raise PayloadError(422, [problem(None, "body", "body", "expected a JSON object with 'records' (a list of "
                                                               f"objects) or 'record', got {_json_type(payload)}")])
    unknown = [k for k in payload if k not in ("records", "record")]
    if unknown or len(payload) != 1:
        found = ", ".join(repr(str(k)[:50]) for k in payload) or "nothing"
        raise PayloadError(422, [problem(None, "body", "body",
                                         f"expected exactly one of 'records' or 'record', got {found}")])
    if "record" in payload:
        return [payload["record"]]
    records = payload["records"]
    if not isinstance(records, list):
        raise PayloadError(422, [problem(None, "records", "records",
                                         f"expected a list of objects, got {_json_type(records)}")])
    if not records:
        raise PayloadError(422, [problem(None, "records", "records", "expected at least one record, got none")])
    if len(records) > max_records:
        raise PayloadError(413, [problem(None, "records", "max_records",
                                         f"{len(records)} records exceed the limit of {max_records} per request")])
    return records


_TRUE = frozenset({"1", "true", "yes", "positive", "pos"})
_FALSE = frozenset({"0", "false", "no", "negative", "neg"})


def parse_label(value: Any, positive: Iterable[str] = (), negative: Iterable[str] = ()) -> int | None:
    """1 or 0 from true/false, 1/0, "1"/"0", "yes"/"no", "positive"/"negative" or the pipeline's own target
    values (`positive`, `negative`, compared case-insensitively); None if it is none of these."""
    if isinstance(value, bool):
        return int(value)
    if type(value) is int or (type(value) is float and value in (0.0, 1.0)):
        return int(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in {p.lower() for p in positive}:
            return 1
        if text in _FALSE or text in {n.lower() for n in negative}:
            return 0
    return None


@dataclass(frozen=True)
class LabelRule:
    """How a model's `/feedback` labels are read, per task: binary 1/0 (also true/false, yes/no and the
    pipeline's own target values), multiclass one of `classes` (stored as its code), regression a finite number."""

    task: str = "binary"
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()

    def parse(self, value: Any) -> tuple[float | None, str, str]:
        """(label, rule, message): the label as stored (float), or None with the rule broken and why."""
        shown = repr(value)[:40]
        if value is None:
            return None, "missing", f"expected {self.expected()}, got nothing"
        if self.task == "regression":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None, "type", f"expected {self.expected()}, got {_json_type(value)}"
            if not math.isfinite(value):
                return None, "finite", f"expected {self.expected()}, got {shown}"
            return float(value), "", ""
        if self.task == "multiclass":
            text = _class_text(value)
            if text is not None and text in self.classes:
                return float(self.classes.index(text)), "", ""
            return None, "class", f"expected {self.expected()}, got {shown}"
        label = parse_label(value, self.positive, self.negative)
        return (None, "type", f"expected {self.expected()}, got {shown}") if label is None else (float(label), "", "")

    def expected(self) -> str:
        if self.task == "regression":
            return "a finite number (the observed value)"
        if self.task == "multiclass":
            return f"one of the classes {list(self.classes)[:20]}"
        return "1/0, true/false or a class name"


def _class_text(value: Any) -> str | None:
    """A multiclass label as the text of a class: strings as they are, integral numbers without a fraction."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    return None


def feedback_items(payload: Any, max_items: int, positive: Iterable[str] = (),
                   negative: Iterable[str] = ()) -> list[tuple[str, int]]:
    """(request_id, 0/1) pairs of a binary model's `/feedback` body (see `feedback_pairs`)."""
    rule = LabelRule("binary", tuple(positive), tuple(negative))
    return [(rid, int(label)) for rid, label in feedback_pairs(payload, max_items, rule)]


def feedback_pairs(payload: Any, max_items: int, rule: LabelRule) -> list[tuple[str, float]]:
    """(request_id, label) pairs from a `/feedback` body: one `{"request_id", "label"}` object or a list of them;
    labels read by `rule` (the model's task). Every problem is reported per item and field (422)."""
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise PayloadError(422, [problem(None, "body", "body", "expected at least one feedback item, got none")])
    if len(items) > max_items:
        raise PayloadError(413, [problem(None, "body", "max_records",
                                         f"{len(items)} feedback items exceed the limit of {max_items}")])
    found: list[dict[str, Any]] = []
    pairs: list[tuple[str, float]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            found.append(problem(i, None, "type", f"expected a JSON object, got {_json_type(item)}"))
            continue
        found.extend(problem(i, str(k)[:100], "extra", f"{str(k)[:100]!r} is not a feedback field "
                                                       "(expected request_id, label)")
                     for k in item if k not in ("request_id", "label"))
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not _is_uuid(request_id):
            kind = "missing" if request_id is None else "format"
            shown = repr(request_id)[:40] if isinstance(request_id, str) else _json_type(request_id)
            found.append(problem(i, "request_id", kind, "expected the request id (a UUID string) returned by "
                                                        f"/predict, got {shown}"))
        label, broken, message = rule.parse(item.get("label"))
        if label is None:
            found.append(problem(i, "label", broken, message))
        if not found or found[-1]["record"] != i:
            pairs.append((str(request_id), float(label)))  # type: ignore[arg-type]
    if found:
        raise PayloadError(422, found)
    return pairs


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) <= 36


# --- /predict?explain=true&top_k=k ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    """What an explained /predict request asks for: `top_k` contributions per record (None: the default)."""

    top_k: int | None = None

    def resolve(self, n_features: int, what: str) -> int:
        """The number of contributions to list for a model of `n_features` features (`what` names it in the
        message): `top_k` if it is at most `n_features` (else 422, field `top_k`, rule `range`), by default
        DEFAULT_TOP_K capped at `n_features`."""
        if self.top_k is None:
            return max(1, min(DEFAULT_TOP_K, n_features))
        if self.top_k > n_features:
            raise PayloadError(422, [problem(None, "top_k", "range",
                                             f"top_k={self.top_k} exceeds the {n_features} features of {what}: "
                                             f"expected an integer in [1, {n_features}]")])
        return self.top_k


def explain_options(params: Iterable[tuple[str, str]]) -> ExplainRequest | None:
    """The explanation a /predict request asks for, from its query parameters (`explain`, `top_k`; others are not
    read): None unless `explain` is true. 422 with a problem per bad field (see the module docstring); `top_k`'s
    upper bound depends on the answering model and is checked by `ExplainRequest.resolve`."""
    explain: list[str] = []
    top_k: list[str] = []
    for key, value in params:
        if key == "explain":
            explain.append(value)
        elif key == "top_k":
            top_k.append(value)
    found: list[dict[str, Any]] = []
    asked = False
    if len(explain) > 1:
        found.append(problem(None, "explain", "single", f"explain is given {len(explain)} times: give it once"))
    elif explain:
        flag = _BOOLEAN.get(explain[0].strip().lower())
        if flag is None:
            found.append(problem(None, "explain", "boolean",
                                 f"expected a boolean (true, false, 1 or 0), got {explain[0][:40]!r}"))
        asked = bool(flag)
    k: int | None = None
    if len(top_k) > 1:
        found.append(problem(None, "top_k", "single", f"top_k is given {len(top_k)} times: give it once"))
    elif top_k:
        text = top_k[0].strip()
        if not _DIGITS.fullmatch(text):
            found.append(problem(None, "top_k", "integer", f"expected a positive integer, got {top_k[0][:40]!r}"))
        elif int(text) < 1:
            found.append(problem(None, "top_k", "range", f"expected an integer >= 1, got {int(text)}"))
        else:
            k = int(text)
        if not asked and not any(p["field"] == "explain" for p in found):
            found.append(problem(None, "top_k", "requires_explain",
                                 "top_k is only read with explain=true (no explanation is computed otherwise)"))
    if found:
        raise PayloadError(422, found)
    return ExplainRequest(k) if asked else None


def check_explained_records(records: Sequence[Any], limit: int) -> None:
    """At most `limit` records in an explained request (422, field `records`, rule `max_explained_records`)."""
    if len(records) > limit:
        raise PayloadError(422, [problem(None, "records", "max_explained_records",
                                         f"{len(records)} records exceed the limit of {limit} per explained request "
                                         "(explain=true)")])
