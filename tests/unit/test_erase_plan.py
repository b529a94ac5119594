"""`crispflow erase plan`: every file holding a subject (clear where the source put it, pseudonymised everywhere
else), nothing for a key that is nowhere, and exit 2 with a message naming the rule for a caller's mistake."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support.keys import session_keys

from crispflow.data import datasets
from crispflow.data.extracts import assemble
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Extract, Interval
from crispflow.erasure.plan import Subject, plan
from crispflow.lake import Lake
from crispflow.spec import load_spec
from crispflow.stack.main import main

ROOT = Path(__file__).resolve().parents[2]


def _subject(key: str) -> Subject:
    return Subject.of_key(load_spec("lending_club"), key, session_keys())


INTERVAL = Interval(datetime(2026, 1, 1), datetime(2026, 2, 1))


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Any]:
    """One gated and published batch whose source repeats one loan (a quarantined duplicate)."""
    spec = load_spec("lending_club")
    demo = pd.read_parquet(ROOT / "include/data/lending_club.parquet")
    month = demo[demo["application_month"] < "2026-02-01"].head(300)
    raw = pd.concat([month, month.iloc[[7]]], ignore_index=True)
    buffer = io.BytesIO()
    raw.to_parquet(buffer, index=False)
    extracts = [Extract("loans", raw, buffer.getvalue(), "parquet", {"kind": "file", "sha256": "x"})]
    lake = Lake(tmp_path_factory.mktemp("erase-lake"))
    batch, report = assemble(spec, extracts, INTERVAL)
    report = datasets.stage(lake, spec, INTERVAL, extracts, batch, report)
    outcome = validate_batch(spec, batch, INTERVAL, report["batch_id"])
    datasets.store_outcome(lake, spec, report["batch_id"], outcome, session_keys())
    datasets.publish(lake, spec, report["batch_id"], {"dag_id": "t", "run_id": "r"})
    return lake, month


def test_the_plan_finds_the_subject_in_every_store(lake: tuple[Lake, Any]) -> None:
    store, month = lake
    key = str(int(month["loan_id"].iat[7]))  # the duplicated loan
    found = plan(store, load_spec("lending_club"), _subject(key), session_keys())
    rows = {p.store: (p.rows, p.form) for p in found.places}
    assert rows == {
        "raw": (2, "clear"),
        "staging": (2, "clear"),
        "validated": (1, "pseudonym"),
        "quarantine": (1, "pseudonym"),
        "curated": (1, "pseudonym"),
    }
    assert found.subject == session_keys().pseudonym(key) and len(found.dataset_versions) == 1
    # the plan names the subject by its pseudonym only (the key as a whole number: hex digests hold digit runs)
    assert not re.search(rf"(?<![\w.]){key}(?![\w.])", json.dumps(found.to_json()))


def test_a_key_that_is_nowhere_gives_an_empty_plan(lake: tuple[Lake, Any]) -> None:
    found = plan(lake[0], load_spec("lending_club"), _subject("999999999"), session_keys())
    assert found.places == [] and found.files_scanned >= 5


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("", "empty"),
        (" 12", "whitespace"),
        ("012", "leading zeros"),
        ("12.0", "not a whole number"),
        ("١٢", "not a whole number"),
        ("1" * 300, "longer than"),
        ("12\u200b", "invisible"),
    ],
)
def test_a_bad_key_exits_2_naming_the_rule(key: str, rule: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["erase", "plan", "--pipeline", "lending_club", "--key", key]) == 2
    out = capsys.readouterr().out
    assert rule in out and "key" in out
    if key.strip():
        assert key.strip() not in out  # never echoed


def test_an_unknown_pipeline_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["erase", "plan", "--pipeline", "no_such_pipeline", "--key", "1"]) == 2
    assert "no_such_pipeline" in capsys.readouterr().out


def test_the_cli_prints_the_plan_as_json(
    lake: tuple[Lake, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    store, month = lake
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", Path(store.root).as_uri())
    key = str(int(month["loan_id"].iat[3]))
    assert main(["erase", "plan", "--pipeline", "lending_club", "--key", key, "--ticket", "T-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ticket"] == "T-1" and {p["store"] for p in out["places"]} >= {"raw", "curated", "validated"}


def test_the_prediction_log_is_searched_by_entity(lake: tuple[Lake, Any], tmp_path: Path) -> None:
    """Rows the model server logged: the entity pseudonym; a file whose entity is all missing is skipped."""
    store, month = lake
    keys, key = session_keys(), str(int(month["loan_id"].iat[5]))
    hour = tmp_path / "crispflow-lending_club" / "predictions" / "date=2026-01-05" / "hour=10"
    hour.mkdir(parents=True)
    pd.DataFrame(
        {"request_id": ["a", "b", "c"], "entity": [keys.pseudonym(key), keys.pseudonym("1"), keys.pseudonym(key)]}
    ).to_parquet(hour / "part-1.parquet")
    pd.DataFrame({"request_id": ["d"], "entity": [None]}).to_parquet(hour / "part-2.parquet")
    found = plan(store, load_spec("lending_club"), _subject(key), keys, tmp_path, "crispflow-lending_club")
    logged = [p for p in found.places if p.store == "predictions"]
    assert [(p.path, p.rows) for p in logged] == [
        ("crispflow-lending_club/predictions/date=2026-01-05/hour=10/part-1.parquet", 2)
    ]
