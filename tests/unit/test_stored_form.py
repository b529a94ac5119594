"""PII policies per column (`pii: hmac | drop | keep`, `true` = hmac) and the stored form they give: keyed
pseudonyms for the key and `hmac` columns, `drop` columns gone, in the quarantine and the validated rows alike."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from support.keys import session_keys

from crispflow.data import datasets
from crispflow.data.extracts import assemble
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Extract, Interval
from crispflow.errors import SpecError
from crispflow.governance.pseudonyms import PseudonymError, is_pseudonym
from crispflow.governance.stored_form import parse_serving_tags, serving_tags, stored_form
from crispflow.lake import Lake, read_parquet
from crispflow.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include/pipelines/lending_club.yaml"
INTERVAL = Interval(datetime(2026, 1, 1), datetime(2026, 2, 1))


def _spec(**columns: dict[str, Any]) -> Any:
    """The demo spec with some columns' fields replaced."""
    data = yaml.safe_load(DEMO.read_text())
    for column in data["columns"]:
        column.update(columns.get(column["name"], {}))
    return parse_spec(data)


def test_pii_true_reads_as_hmac_and_the_key_is_hmac_by_default() -> None:
    spec = load_spec("lending_club")
    assert spec.pii_policy("addr_state") == "hmac" and spec.pii_policy("loan_id") == "hmac"
    assert spec.pii_policy("int_rate") is None and spec.dropped_columns == []
    assert _spec(int_rate={"pii": True}).pii_policy("int_rate") == "keep"  # a numeric feature: order kept


def test_policies_change_features_and_need_their_fields() -> None:
    dropped = _spec(addr_state={"pii": "drop"})
    assert "addr_state" not in dropped.feature_columns and dropped.dropped_columns == ["addr_state"]
    kept = _spec(addr_state={"pii": "keep", "pii_reason": "regulator asks for state-level reports"})
    assert kept.pii_policy("addr_state") == "keep" and "addr_state" in kept.feature_columns
    assert _spec(loan_id={"pii": "keep", "pii_reason": "public loan numbers"}).pseudonymised_columns == ["addr_state"]


@pytest.mark.parametrize(("columns", "field", "rule"), [
    ({"addr_state": {"pii": "keep"}}, "pii_reason", "state why"),
    ({"addr_state": {"pii": "hmac", "pii_reason": "x"}}, "pii_reason", "only a `pii: keep`"),
    ({"loan_id": {"pii": "drop"}}, "pii", "never `drop`"),
    ({"Class": {"pii": "hmac"}}, "pii", "can only be `keep`"),
    ({"int_rate": {"pii": "hmac"}}, "pii", "loses its order"),
    ({"addr_state": {"pii": "drop", "feature": True}}, "feature", "never stored"),
    ({"addr_state": {"pii": "scramble"}}, "pii", ""),
])
def test_a_bad_policy_names_the_field_and_the_rule(columns: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(SpecError) as err:
        _spec(**columns)
    assert field in str(err.value) and rule in str(err.value)


def test_old_specs_keep_their_hash() -> None:
    data = yaml.safe_load(DEMO.read_text())
    before = parse_spec(data).spec_hash()
    for column in data["columns"]:
        column.setdefault("pii_reason", "")
    assert parse_spec(data).spec_hash() == before


def test_stored_form_pseudonymises_drops_and_sorts() -> None:
    spec, keys = _spec(sub_grade={"pii": "drop"}), session_keys()
    frame = pd.DataFrame({"loan_id": [30, 10, 20], "addr_state": ["CA", None, "NY"], "sub_grade": ["A1", "B2", "C3"],
                          "int_rate": [1.0, 2.0, 3.0]})
    out = stored_form(spec, frame, keys)
    assert "sub_grade" not in out and list(out["int_rate"].sort_values()) == [1.0, 2.0, 3.0]
    assert list(out["loan_id"]) == sorted(keys.pseudonym(str(k)) for k in (10, 20, 30))
    assert all(is_pseudonym(v) for v in out["loan_id"])
    by_key = dict(zip(out["loan_id"], out["addr_state"], strict=True))
    assert pd.isna(by_key[keys.pseudonym("10")]) and by_key[keys.pseudonym("30")] == keys.pseudonym("CA", "addr_state")
    assert keys.pseudonym("CA", "addr_state") != keys.pseudonym("CA", "entity")  # one domain per column
    with pytest.raises(PseudonymError, match="crispflow_pseudonyms"):
        stored_form(spec, frame, None)


def test_the_gate_stores_no_clear_key_or_pii_value(tmp_path: Path) -> None:
    spec, keys = load_spec("lending_club"), session_keys()
    raw = pd.read_parquet(ROOT / "include/data/lending_club.parquet").head(400).copy()
    raw.loc[raw.index[:3], "int_rate"] = -5.0  # quarantined: int_rate below its min
    extracts = [Extract("loans", raw, b"raw", "parquet", {"kind": "file", "sha256": "x"})]
    lake = Lake(tmp_path)
    batch, report = assemble(spec, extracts, INTERVAL)
    report = datasets.stage(lake, spec, INTERVAL, extracts, batch, report)
    summary = datasets.store_outcome(lake, spec, report["batch_id"], validate_batch(spec, batch, INTERVAL,
                                                                                    report["batch_id"]), keys)
    assert summary["rows_quarantined"] >= 3 and summary["stored_form"]["key_id"] == keys.key_id
    published = datasets.publish(lake, spec, report["batch_id"], {"dag_id": "t", "run_id": "r"})
    curated = datasets.load_version(lake, published.version_id, spec.name)
    quarantine = read_parquet(lake.quarantine(spec.name, report["batch_id"]))
    for frame in (curated, quarantine):
        assert all(is_pseudonym(v) for v in frame["loan_id"]) and all(is_pseudonym(v) for v in frame["addr_state"])
        assert not set(frame["loan_id"]) & set(map(str, raw["loan_id"]))
        assert not set(frame["addr_state"]) & set(raw["addr_state"])
    assert list(curated["loan_id"]) == sorted(curated["loan_id"])  # row-group statistics locate a subject
    manifest = published.manifest
    assert manifest["stored_form"] == {"key_id": keys.key_id, "hmac": ["loan_id", "addr_state"], "drop": [],
                                       "keep": {}}
    assert {c["name"]: c["pii"] for c in manifest["schema"]}["addr_state"] == "hmac"
    tags = serving_tags(spec, manifest)  # what training tags the model version with, what the server reads back
    assert parse_serving_tags(tags) == (keys.key_id, {"addr_state": "addr_state"})
    assert json.loads(tags["crispflow.pseudonymised_fields"]) == {"addr_state": "addr_state"}
