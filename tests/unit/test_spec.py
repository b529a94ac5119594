"""Pipeline specs: the demo spec is valid, and every kind of mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crispflow.errors import SpecError
from crispflow.spec import list_specs, load_spec, load_spec_file, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "pipelines" / "lending_club.yaml"


def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def _column(data: dict, name: str) -> dict:
    return next(c for c in data["columns"] if c["name"] == name)


def demo_before_fairness() -> dict:
    """The demo spec as it was before columns could be `sensitive` (its emp_length marked since)."""
    data = demo()
    for column in data["columns"]:
        if column["name"] == "emp_length":
            column.clear()
            column.update(name="emp_length", type="category")
    return data


def test_demo_spec_is_valid_and_hash_is_stable() -> None:
    spec = load_spec_file(DEMO)
    assert spec.key == "loan_id" and spec.target.positive == "bad"
    assert "Class" not in spec.feature_columns and "loan_id" not in spec.feature_columns
    assert spec.pii_columns == spec.pseudonymised_columns == ["loan_id", "addr_state"]  # the key: hmac by default
    assert spec.spec_hash() == parse_spec(demo()).spec_hash()
    assert "lending_club" in list_specs()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["sources"][0].update(kind="ftp"), "sources[0]"),
        (lambda d: d.update(key="nope"), "key: 'nope' is not a declared column"),
        (lambda d: d["target"].update(positive="maybe"), "target.positive"),
        (lambda d: d["columns"][2].update(min=10, max=1), "columns[2]: min (10.0) is greater than max"),
        (lambda d: d["columns"][3].update(min=1), "columns[3]: min/max need a numeric type"),
        (lambda d: d.update(time_column="funded_amnt"), "time_column: 'funded_amnt' must have type datetime"),
        (lambda d: d["gate"].update(max_quarantine_fraction=2), "gate.max_quarantine_fraction"),
        (lambda d: d["quality"]["row_rules"][1].update(pattern="("), "quality.row_rules[1]"),
        (lambda d: d["quality"]["row_rules"][0].update(column="ghost"), "quality.row_rules[positive_income].column"),
        (lambda d: d.update(colums=[]), "colums: Extra inputs are not permitted"),
        (lambda d: d["columns"].append({"name": "term", "type": "string"}), "duplicate names ['term']"),
        (lambda d: _column(d, "int_rate").update(sensitive=True),
         "x.yaml: columns[4].sensitive: column 'int_rate' has type 'float'"),
        (lambda d: _column(d, "application_month").update(sensitive=True),
         "x.yaml: columns[1].sensitive: column 'application_month' has type 'datetime'"),
        (lambda d: _column(d, "loan_id").update(sensitive=True),
         "x.yaml: columns[0].sensitive: 'loan_id' is the key; it cannot be sensitive"),
        (lambda d: _column(d, "Class").update(sensitive=True),
         "x.yaml: columns[24].sensitive: 'Class' is the target column"),
        (lambda d: _column(d, "application_month").update(feature=True),
         "x.yaml: columns[1].feature: 'application_month' is the time_column, never a feature"),
        (lambda d: [c.update(feature=False) for c in d["columns"]], "x.yaml: columns: no feature column left"),
        (lambda d: d.update(blessing={"fairness": {"mode": "always"}}), "x.yaml: blessing.fairness.mode"),
        (lambda d: d.update(blessing={"fairness": {"metrics": []}}), "x.yaml: blessing.fairness.metrics"),
        (lambda d: d.update(blessing={"fairness": {"max_increase": -0.1}}), "x.yaml: blessing.fairness.max_increase"),
    ],
)
def test_spec_errors_name_the_field(mutate, field: str) -> None:
    data = demo()
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "x.yaml")
    assert field in str(err.value)
    assert str(err.value).startswith("x.yaml: ")


def test_load_spec_rejects_unsafe_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a valid pipeline name"):
        load_spec("../etc/passwd")
    with pytest.raises(SpecError, match="no such pipeline spec"):
        load_spec_file(tmp_path / "absent.yaml")
    bad = tmp_path / "other.yaml"
    bad.write_text(DEMO.read_text())
    with pytest.raises(SpecError, match="must equal the file name"):
        load_spec_file(bad)
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec_file(tmp_path / "broken.yaml")


# ------------------------------------------------------------------------------------ sensitive columns


def test_a_sensitive_column_is_no_feature_unless_the_spec_says_so() -> None:
    assert load_spec_file(DEMO).sensitive_columns == ["emp_length"]  # sensitive, and a feature by `feature: true`
    assert "emp_length" in load_spec_file(DEMO).feature_columns
    data = demo_before_fairness()
    _column(data, "verification_status")["sensitive"] = True
    spec = parse_spec(data)
    assert spec.sensitive_columns == ["verification_status"]
    assert "verification_status" not in spec.feature_columns and "term" in spec.feature_columns
    _column(data, "verification_status")["feature"] = True
    _column(data, "term")["feature"] = False
    spec = parse_spec(data)
    assert spec.sensitive_columns == ["verification_status"]
    assert "verification_status" in spec.feature_columns and "term" not in spec.feature_columns
    assert spec.feature_columns == [c for c in load_spec_file(DEMO).feature_columns if c != "term"]


def test_fairness_metrics_fit_the_task() -> None:
    regression = {"name": "r", "sources": [{"name": "s", "kind": "file", "url": "x.parquet"}], "key": "id",
                  "target": {"column": "y", "task": "regression"},
                  "columns": [{"name": "id", "type": "int"}, {"name": "y", "type": "float"},
                              {"name": "x", "type": "float"}, {"name": "group", "type": "string", "sensitive": True}]}
    assert parse_spec(regression).blessing.fairness.metrics  # the default (binary) list is not an error
    regression["blessing"] = {"fairness": {"metrics": ["equalized_odds_difference", "demographic_parity_difference"]}}
    assert parse_spec(regression)  # nor is it written out (a dumped spec parses again)
    regression["blessing"] = {"fairness": {"metrics": ["equalized_odds_difference"]}}
    with pytest.raises(SpecError, match=r"blessing\.fairness\.metrics: \['equalized_odds_difference'\] apply to "
                       "binary targets only"):
        parse_spec(regression)
    regression["blessing"] = {"fairness": {"metrics": ["primary_metric_difference"], "mode": "block"}}
    assert parse_spec(regression).blessing.fairness.mode == "block"


def test_old_specs_keep_their_hash_with_the_fairness_fields() -> None:
    """Columns' `sensitive`/`feature` and `blessing.fairness` at their defaults leave the hash of a spec written
    before them unchanged; setting one changes it."""
    old = "18f5a93dff9b14a6a036e06d3f09f4b4cad8b03a4dac7b6efc86c3af5713540c"  # lending_club before the fields
    assert parse_spec(demo_before_fairness()).spec_hash() == old
    assert load_spec_file(DEMO).spec_hash() != old  # emp_length is marked sensitive since
    explicit = demo_before_fairness()
    for column in explicit["columns"]:
        column.update(sensitive=False, feature=None)
    explicit["blessing"]["fairness"] = {"mode": "warn", "max_increase": 0.05}
    assert parse_spec(explicit).spec_hash() == old
    old_demo = demo_before_fairness()
    for change in ({"blessing": {**old_demo["blessing"], "fairness": {"mode": "block"}}},
                   {"columns": [{**c, "sensitive": c["name"] == "term"} for c in old_demo["columns"]]},
                   {"columns": [{**c, "feature": False} if c["name"] == "term" else c for c in old_demo["columns"]]}):
        assert parse_spec({**old_demo, **change}).spec_hash() != old
