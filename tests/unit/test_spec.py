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


def test_demo_spec_is_valid_and_hash_is_stable() -> None:
    spec = load_spec_file(DEMO)
    assert spec.key == "loan_id" and spec.target.positive == "bad"
    assert "Class" not in spec.feature_columns and "loan_id" not in spec.feature_columns
    assert spec.pii_columns == ["addr_state"]
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
