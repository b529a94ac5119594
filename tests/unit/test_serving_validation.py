"""Request validation against a model signature: field-level problems, never an exception other than PayloadError;
the explain/top_k query parameters of /predict, and the additivity guard on every served explanation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crispflow.serving.batcher import checked_explanation
from crispflow.serving.validation import (
    ExplainRequest,
    FieldSpec,
    InputSchema,
    PayloadError,
    check_content_type,
    check_explained_records,
    explain_options,
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


# --- /predict?explain=true&top_k=k ------------------------------------------------------------------------------


def explain_problems(params: list[tuple[str, str]]) -> list[tuple[str | None, str]]:
    with pytest.raises(PayloadError) as err:
        explain_options(params)
    assert err.value.status == 422 and all(d["message"] for d in err.value.details)
    return [(d["field"], d["rule"]) for d in err.value.details]


@pytest.mark.parametrize(("params", "expected"), [
    ([], None),
    ([("explain", "false")], None),
    ([("explain", "0")], None),
    ([("explain", "true")], ExplainRequest(None)),
    ([("explain", "TRUE")], ExplainRequest(None)),
    ([("explain", " 1 ")], ExplainRequest(None)),
    ([("explain", "True"), ("top_k", "3")], ExplainRequest(3)),
    ([("top_k", "07"), ("explain", "1"), ("other", "x")], ExplainRequest(7)),  # other parameters are not read
])
def test_explain_options_read_a_boolean_and_a_top_k(params: list[tuple[str, str]],
                                                     expected: ExplainRequest | None) -> None:
    assert explain_options(params) == expected


@pytest.mark.parametrize(("params", "expected"), [
    ([("explain", "yes")], [("explain", "boolean")]),
    ([("explain", "")], [("explain", "boolean")]),
    ([("explain", "2")], [("explain", "boolean")]),
    ([("explain", "true"), ("explain", "true")], [("explain", "single")]),
    ([("explain", "true"), ("top_k", "0")], [("top_k", "range")]),
    ([("explain", "true"), ("top_k", "-1")], [("top_k", "integer")]),
    ([("explain", "true"), ("top_k", "2.5")], [("top_k", "integer")]),
    ([("explain", "true"), ("top_k", "five")], [("top_k", "integer")]),
    ([("explain", "true"), ("top_k", "1_0")], [("top_k", "integer")]),  # int() would take it
    ([("explain", "true"), ("top_k", "9" * 12)], [("top_k", "integer")]),
    ([("explain", "true"), ("top_k", "1"), ("top_k", "2")], [("top_k", "single")]),
    ([("top_k", "3")], [("top_k", "requires_explain")]),  # refused, not silently ignored
    ([("explain", "false"), ("top_k", "3")], [("top_k", "requires_explain")]),
    ([("explain", "maybe"), ("top_k", "x")], [("explain", "boolean"), ("top_k", "integer")]),  # both fields named
])
def test_bad_explain_parameters_name_their_field_and_rule(params: list[tuple[str, str]],
                                                          expected: list[tuple[str, str]]) -> None:
    assert explain_problems(params) == expected


def test_top_k_is_bounded_by_the_answering_models_features() -> None:
    assert ExplainRequest(None).resolve(22, "m v1") == 5  # the default
    assert ExplainRequest(None).resolve(3, "m v1") == 3  # capped at the number of features
    assert ExplainRequest(22).resolve(22, "m v1") == 22
    with pytest.raises(PayloadError) as err:
        ExplainRequest(23).resolve(22, "crispflow-x v4")
    assert err.value.status == 422 and err.value.rules == ["range"]
    assert err.value.details[0]["field"] == "top_k" and "22 features of crispflow-x v4" in str(err.value)


def test_an_explained_request_holds_at_most_the_explained_record_limit() -> None:
    check_explained_records([GOOD] * 100, 100)
    with pytest.raises(PayloadError) as err:
        check_explained_records([GOOD] * 101, 100)
    assert err.value.status == 422 and err.value.rules == ["max_explained_records"]
    assert err.value.details[0]["field"] == "records"


def _explanation(contributions: list[float], other: float, base: float, output: float) -> dict:
    return {"method": "linear_exact", "space": "log_odds", "base_value": base,
            "contributions": [{"feature": f"f{i}", "value": 1.0, "contribution": c}
                              for i, c in enumerate(contributions)],
            "other": other, "check": {"output": output, "abs_error": 0.0}}


def test_only_additive_finite_explanations_are_served() -> None:
    good = _explanation([0.5, -0.25], 0.125, -1.0, -0.625)
    assert checked_explanation(good, 1e-6) is good
    # the check is recomputed: a claimed abs_error of 0 does not make a wrong explanation right
    with pytest.raises(ValueError, match="not additive"):
        checked_explanation(_explanation([0.5, -0.25], 0.125, -1.0, -0.6), 1e-6)
    assert checked_explanation(_explanation([0.5], 0.0, 0.0, 0.50005), 1e-4)  # within a tree's tolerance
    for bad in (float("nan"), float("inf"), None, True):
        with pytest.raises(ValueError, match="non-finite"):
            checked_explanation(_explanation([0.5, bad], 0.0, 0.0, 0.5), 1e-6)  # type: ignore[list-item]
