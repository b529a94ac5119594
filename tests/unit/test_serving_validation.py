"""Request validation against a model signature: field-level problems, never an exception other than PayloadError."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crispflow.serving.validation import (
    FieldSpec,
    InputSchema,
    PayloadError,
    check_content_type,
    feedback_items,
    parse_json,
    parse_label,
    records_of,
)

SCHEMA = InputSchema([FieldSpec("int_rate", "double"), FieldSpec("delinq_2yrs", "long"),
                      FieldSpec("term", "string"), FieldSpec("revol_util", "double", required=False),
                      FieldSpec("flag", "boolean", required=False), FieldSpec("when", "datetime", required=False)])
GOOD = {"int_rate": 12.5, "delinq_2yrs": 0, "term": "term_36", "revol_util": 40.0}


def rules(record: object, allowed: tuple[str, ...] = ()) -> list[tuple[str | None, str]]:
    return [(p["field"], p["rule"]) for p in SCHEMA.check_record(0, record, allowed)]


def test_a_good_record_has_no_problems() -> None:
    assert rules(GOOD) == []
    assert rules({**GOOD, "revol_util": None, "flag": True, "when": "2026-01-31T10:00:00Z"}) == []
    assert rules({"int_rate": 1, "delinq_2yrs": 2.0, "term": "x"}) == []  # optional fields may be absent


@pytest.mark.parametrize(("change", "expected"), [
    ({"int_rate": "12.5"}, [("int_rate", "type")]),
    ({"int_rate": True}, [("int_rate", "type")]),
    ({"int_rate": float("nan")}, [("int_rate", "finite")]),
    ({"int_rate": float("inf")}, [("int_rate", "finite")]),
    ({"int_rate": None}, [("int_rate", "required")]),
    ({"delinq_2yrs": 1.5}, [("delinq_2yrs", "type")]),
    ({"delinq_2yrs": 2**70}, [("delinq_2yrs", "range")]),
    ({"delinq_2yrs": [1]}, [("delinq_2yrs", "type")]),
    ({"term": 36}, [("term", "type")]),
    ({"flag": "yes"}, [("flag", "type")]),
    ({"when": "not a date"}, [("when", "type")]),
    ({"revol_util": float("-inf")}, [("revol_util", "finite")]),
    ({"surprise": 1}, [("surprise", "extra")]),
])
def test_each_bad_value_is_named(change: dict, expected: list) -> None:
    assert rules({**GOOD, **change}) == expected


def test_missing_fields_and_non_objects() -> None:
    record = dict(GOOD)
    del record["term"]
    assert rules(record) == [("term", "missing")]
    assert rules([1, 2]) == [(None, "type")]
    # an extra field with an optional one absent (same number of keys) is still found
    assert rules({"int_rate": 1.0, "delinq_2yrs": 0, "term": "t", "x": 1}) == [("x", "extra")]


def test_the_entity_key_is_allowed() -> None:
    assert rules({**GOOD, "loan_id": 7}, ("loan_id",)) == []


def test_the_frame_follows_the_signature() -> None:
    frame = SCHEMA.frame([GOOD, {**GOOD, "revol_util": None, "delinq_2yrs": 3, "loan_id": 9}])
    assert list(frame.columns) == list(SCHEMA.names)
    assert frame["int_rate"].dtype == np.float64 and frame["delinq_2yrs"].dtype == np.int64
    assert math.isnan(frame["revol_util"][1]) and frame["term"].tolist() == ["term_36", "term_36"]


def test_body_shapes() -> None:
    assert records_of({"records": [GOOD]}, 10) == [GOOD]
    assert records_of({"record": GOOD}, 10) == [GOOD]
    cases = [([GOOD], 422, "body"), ({"records": GOOD}, 422, "records"), ({"records": []}, 422, "records"),
             ({"records": [GOOD], "record": GOOD}, 422, "body"), ({"rows": [GOOD]}, 422, "body"),
             ({"records": [GOOD] * 11}, 413, "max_records"), ("text", 422, "body")]
    for payload, status, rule in cases:
        with pytest.raises(PayloadError) as err:
            records_of(payload, 10)
        assert (err.value.status, err.value.rules) == (status, [rule]), payload


def test_json_and_content_type() -> None:
    assert parse_json(b'{"a": NaN}')["a"] != parse_json(b'{"a": NaN}')["a"]  # NaN decodes, the fields refuse it
    for body in (b"{", b"\xff\xfe", b"[" * 100_000, b""):
        with pytest.raises(PayloadError) as err:
            parse_json(body)
        assert err.value.status == 400 and err.value.rules == ["json"]
    check_content_type("application/json; charset=utf-8")
    check_content_type("application/vnd.api+json")
    for bad in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        with pytest.raises(PayloadError) as err:
            check_content_type(bad)
        assert err.value.status == 415


def test_many_problems_are_capped() -> None:
    problems = [p for i in range(300) for p in SCHEMA.check_record(i, {"x": 1})]
    error = PayloadError(422, problems)
    assert len(error.details) == 101 and error.details[-1]["rule"] == "truncated"
    json.dumps(error.details)


@pytest.mark.parametrize(("value", "expected"), [
    (True, 1), (False, 0), (1, 1), (0, 0), (1.0, 1), ("1", 1), ("false", 0), ("Bad", 1), ("good", 0),
    ("yes", 1), (2, None), (0.5, None), ("maybe", None), (None, None), ([1], None)])
def test_feedback_labels(value: object, expected: int | None) -> None:
    assert parse_label(value, ("bad",), ("good",)) == expected


def test_feedback_items() -> None:
    rid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    assert feedback_items({"request_id": rid, "label": "bad"}, 10, ("bad",)) == [(rid, 1)]
    assert feedback_items([{"request_id": rid, "label": 0}] * 2, 10) == [(rid, 0), (rid, 0)]
    with pytest.raises(PayloadError) as err:
        feedback_items([{"request_id": "nope", "label": 1}, {"label": 3, "x": 1}, 5], 10)
    found = [(d["record"], d["field"], d["rule"]) for d in err.value.details]
    assert found == [(0, "request_id", "format"), (1, "x", "extra"), (1, "request_id", "missing"),
                     (1, "label", "type"), (2, None, "type")]
    with pytest.raises(PayloadError) as err:
        feedback_items([], 10)
    assert err.value.status == 422
