"""The GX quality gate on the real demo data and on every kind of bad batch. Nothing is ever lost."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from crispflow.data.extracts import assemble
from crispflow.data.quality import REDACTED, validate_batch
from crispflow.data.sources import Extract, Interval
from crispflow.errors import DataRejected, GateMisconfigured
from crispflow.spec import load_spec, parse_spec

INTERVAL = Interval(datetime(2026, 1, 1), datetime(2026, 10, 1))


@pytest.fixture(scope="module")
def spec():
    return load_spec("lending_club")


@pytest.fixture(scope="module")
def batch(spec) -> pd.DataFrame:
    raw = pd.read_parquet("include/data/lending_club.parquet")
    frame, _ = assemble(spec, [Extract("loans", raw, b"", "parquet", {})], INTERVAL)
    return frame


def check_invariant(out) -> None:
    s = out.summary
    assert s["rows_in"] == s["rows_passed"] + s["rows_quarantined"] == len(out.valid) + len(out.quarantine)


def test_real_data_passes_and_quarantines_the_two_zero_incomes(spec, batch) -> None:
    out = validate_batch(spec, batch, INTERVAL, "b-real")
    check_invariant(out)
    assert out.failure is None and out.summary["success"]
    assert out.summary["reasons"] == {"annual_inc:positive_income": 2}
    assert (out.quarantine["annual_inc"].astype(float) == 0).all()
    assert out.valid["loan_id"].is_monotonic_increasing and out.valid["loan_id"].is_unique
    assert list(out.valid.columns) == [c.name for c in spec.columns]
    assert "<html" in out.html.lower() and out.results["statistics"]["evaluated_expectations"] > 50


def test_row_level_problems_are_quarantined_with_reasons(spec, batch) -> None:
    bad = batch.copy()
    bad.loc[0, "int_rate"] = np.nan  # null in a non-nullable column
    bad.loc[1, "int_rate"] = np.inf  # not finite
    bad.loc[2, "term"] = "term_99"  # not an allowed value
    bad.loc[3, "funded_amnt"] = 10**9  # out of range
    bad.loc[4, "loan_id"] = bad.loc[5, "loan_id"]  # duplicate key: the first one is kept
    bad.loc[6, "revol_util"] = -1.0
    out = validate_batch(spec, bad, INTERVAL, "b-rows")
    check_invariant(out)
    assert out.failure is None
    reasons = dict(zip(out.quarantine["_row"], out.quarantine["_reasons"], strict=True))
    assert reasons[0] == "int_rate:not_null"
    assert reasons[1] == "int_rate:type"
    assert reasons[2] == "term:allowed"
    assert reasons[3] == "funded_amnt:range"
    assert reasons[5] == "loan_id:duplicate_key" and 4 not in reasons
    assert reasons[6] == "revol_util:range"


@pytest.mark.parametrize(
    ("mutate", "rule", "column"),
    [
        (lambda b: b.drop(columns=["term"]), "columns_match", None),
        (lambda b: b.assign(surprise=1), "columns_match", None),
        (lambda b: b.assign(funded_amnt="lots"), "type", "funded_amnt"),
        (lambda b: b.iloc[:0], "row_count", None),
        (lambda b: b.iloc[:10], "row_count", None),
        (lambda b: b.assign(int_rate=b["int_rate"] * 3), "plausible_mean_rate", "int_rate"),
        (lambda b: b.assign(term=np.where(np.arange(len(b)) % 10 == 0, "x", b["term"])),
         "max_quarantine_fraction", None),
    ],
)
def test_batch_level_failures_are_typed_name_the_rule_and_lose_nothing(spec, batch, mutate, rule, column) -> None:
    out = validate_batch(spec, mutate(batch), INTERVAL, "b-bad")
    check_invariant(out)
    assert isinstance(out.failure, DataRejected)
    assert out.failure.rule == rule and out.failure.column == column
    assert f"[rule: {rule}]" in str(out.failure)
    assert out.valid.empty  # nothing is publishable
    assert all(f"batch:{rule}" in r for r in out.quarantine["_reasons"])


def test_missing_column_message_names_it(spec, batch) -> None:
    out = validate_batch(spec, batch.drop(columns=["term"]).assign(extra=1), INTERVAL, "b-schema")
    assert "missing columns ['term']" in str(out.failure) and "unexpected columns ['extra']" in str(out.failure)


def test_freshness_sla(spec, batch) -> None:
    late = Interval(datetime(2026, 1, 1), datetime(2027, 1, 1))  # newest row (Sept) is > 62 days before the end
    out = validate_batch(spec, batch, late, "b-stale")
    assert isinstance(out.failure, DataRejected) and out.failure.rule == "freshness_sla"
    assert out.failure.column == "application_month"


def test_extra_columns_can_be_allowed_and_are_dropped(spec, batch) -> None:
    data = spec.model_dump(mode="json")
    data["gate"]["allow_extra_columns"] = True
    relaxed = parse_spec(data)
    out = validate_batch(relaxed, batch.assign(surprise=1), INTERVAL, "b-extra")
    assert out.failure is None and out.summary["dropped_extra_columns"] == ["surprise"]
    assert "surprise" not in out.valid.columns


def test_misconfigured_expectation_is_an_error_not_a_data_verdict(spec, batch) -> None:
    data = spec.model_dump(mode="json")
    data["quality"]["expectations"] = [
        {"name": "broken", "type": "expect_column_values_to_be_between", "kwargs": {"column": "int_rate",
                                                                                  "min_value": "abc"}}]
    out = validate_batch(parse_spec(data), batch, INTERVAL, "b-misconf")
    assert isinstance(out.failure, GateMisconfigured)
    assert "broken" in out.summary["error"]
    check_invariant(out)
    data["quality"]["expectations"] = [{"name": "unknown", "type": "expect_the_impossible"}]
    out = validate_batch(parse_spec(data), batch, INTERVAL, "b-unknown")
    assert isinstance(out.failure, GateMisconfigured) and "expect_the_impossible" in str(out.failure)


def test_custom_gx_expectation_from_the_spec_runs(spec, batch) -> None:
    data = spec.model_dump(mode="json")
    data["quality"]["expectations"] = [
        {"name": "state_codes", "type": "expect_column_value_lengths_to_be_between", "level": "row",
         "kwargs": {"column": "addr_state", "min_value": 2, "max_value": 2}}]
    bad = batch.copy()
    bad.loc[7, "addr_state"] = "CAL"
    out = validate_batch(parse_spec(data), bad, INTERVAL, "b-custom")
    assert out.failure is None
    assert dict(zip(out.quarantine["_row"], out.quarantine["_reasons"], strict=True))[7] == "addr_state:state_codes"


def test_pii_values_never_reach_stored_results(spec, batch) -> None:
    bad = batch.copy()
    bad.loc[[3, 4], "addr_state"] = None  # fails not_null on the PII column
    bad.loc[5, "term"] = "term_secret"  # a non-PII failure keeps its sample
    out = validate_batch(spec, bad, INTERVAL, "b-pii")
    dumped = json.dumps(out.results)
    addr = [r for r in out.results["results"] if r["expectation_config"]["kwargs"].get("column") == "addr_state"]
    assert addr and all(
        v == REDACTED for r in addr for v in r["result"].get("partial_unexpected_list", []))
    assert '"unexpected_index_list"' not in dumped and '"unexpected_list"' not in dumped
    assert "term_secret" in dumped  # non-PII samples stay useful
    states = set(batch["addr_state"].dropna())
    pii_results = json.dumps(addr)
    assert not any(f'"{s}"' in pii_results for s in states)


def test_a_batch_failure_on_a_pii_column_names_the_rule_but_not_the_values(spec, batch) -> None:
    """The failure message is built after masking: it reaches task logs, the UI and the notifier."""
    data = spec.model_dump(mode="json")
    for column in data["columns"]:
        if column["name"] == "annual_inc":
            column["pii"] = True
    data["quality"]["batch_rules"] = [{"name": "plausible_income", "kind": "mean_between", "column": "annual_inc",
                                       "min": 1, "max": 2}]
    out = validate_batch(parse_spec(data), batch, INTERVAL, "b-pii-batch")
    mean = batch["annual_inc"][batch["annual_inc"] > 0].mean()
    assert isinstance(out.failure, DataRejected) and out.failure.rule == "plausible_income"
    message = str(out.failure) + json.dumps(out.summary, default=str)
    assert "plausible_income" in message and REDACTED in message
    assert f"{mean:.2f}"[:6] not in message and str(round(mean)) not in message
    check_invariant(out)
