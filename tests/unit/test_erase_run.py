"""`crispflow erase run|status|verify` on a real lake: a subject in two months (one a raw CSV), a quarantined
duplicate, a composed window, the frozen holdout, batch scores and the prediction log. After the run no file holds
the subject in any form; the old versions are tombstones naming their successors; a re-ingest of the unchanged
sources does not bring the subject back; a rerun changes nothing; a crash between successor and purge recovers;
a changed ledger entry makes `verify` exit 1; the model version trained on the subject's data is flagged in a
real MLflow registry (SQLite store)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from support.erasure_world import (
    MODEL,
    MONTHS,
    REQUEST,
    World,
    build,
    clear_key_spec,
    ingest,
    key_as_value,
    occurrences,
)
from support.erasure_world import subject as _subject
from support.keys import session_keys

from crispflow.data import datasets
from crispflow.erasure.models import DATASET_TAG, DEADLINE, HOLDOUT_TAG, PENDING, flag
from crispflow.erasure.plan import plan
from crispflow.erasure.retrain import plan_after_erasure
from crispflow.erasure.run import Request, ledger_name, run, verify
from crispflow.errors import ParamsError, SupersededVersion
from crispflow.governance.bloom import BloomFilter
from crispflow.lake import read_json
from crispflow.model import holdout
from crispflow.spec import load_spec
from crispflow.stack.main import main

ROOT = Path(__file__).resolve().parents[2]


def _world(tmp: Path) -> World:
    return build(tmp, tmp)


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Any]:
    world = _world(tmp_path_factory.mktemp("erase-run"))
    spec = load_spec("lending_club")
    before = plan(world.lake, spec, _subject(world.key), session_keys(), world.predictions, MODEL)
    assert {p.store for p in before.places} == {
        "raw",
        "staging",
        "validated",
        "quarantine",
        "curated",
        "holdout",
        "scores",
        "predictions",
    }
    return world, run(
        world.lake, spec, _subject(world.key), session_keys(), world.ledger, REQUEST, world.predictions, MODEL
    )


def test_no_file_holds_the_subject_after_the_run(erased: tuple[World, Any]) -> None:
    world, _ = erased
    keys = session_keys()
    names = keys.all_pseudonyms(world.key)
    found = occurrences(Path(world.lake.root), names, world.key)
    listed = [f for f in found if "/governance/suppressed/" in f]
    assert found == listed and len(listed) == len(names)  # only the suppression list names the subject
    assert occurrences(world.predictions, names, world.key) == []
    (index,) = world.predictions.rglob("*.bloom")  # the part's entity index, rebuilt: "no" for the subject now
    assert not BloomFilter.from_bytes(index.read_bytes()).might_contain(names).any()
    assert not verify(
        world.lake, load_spec("lending_club"), _subject(world.key), keys, world.ledger, world.predictions, MODEL
    )


def test_a_pipeline_that_keeps_its_key_in_clear_is_erased_from_every_store(tmp_path: Path) -> None:
    """`pii: keep` on the key: past the raw landing the key reads as itself, not as a pseudonym, and the plan, the
    successors, the holdout and the rewrites must still find it (they once looked for pseudonyms only and missed
    the validated batches, the quarantine, every curated version, the holdout and the scores)."""
    world = build(tmp_path, tmp_path, clear_key_spec())
    keys, subject = session_keys(), _subject(world.key)
    before = plan(world.lake, world.spec, subject, keys, world.predictions, MODEL)
    forms = {(p.store, p.form) for p in before.places}
    assert forms == {(s, "clear") for s in ("raw", "staging", "validated", "quarantine", "curated", "holdout",
                                            "scores")} | {("predictions", "pseudonym")}
    outcome = run(world.lake, world.spec, subject, keys, world.ledger, REQUEST, world.predictions, MODEL)
    assert set(outcome.superseded) == set(world.versions)
    names = keys.all_pseudonyms(world.key)
    found = occurrences(Path(world.lake.root), names, world.key)
    assert found and all("/governance/suppressed/" in f for f in found)
    for successor in outcome.superseded.values():
        rows = datasets.load_version(world.lake, successor, world.spec.name)
        assert world.key not in set(rows[world.spec.key].astype(str)) and len(rows) > 0
    assert not verify(world.lake, world.spec, subject, keys, world.ledger, world.predictions, MODEL)


def test_old_versions_are_tombstones_naming_their_successors(erased: tuple[World, Any]) -> None:
    world, outcome = erased
    spec = load_spec("lending_club")
    assert set(outcome.superseded) == set(world.versions)
    for old, new in outcome.superseded.items():
        with pytest.raises(SupersededVersion, match=new):
            datasets.load_version(world.lake, old, spec.name)
        with pytest.raises(SupersededVersion, match=new):  # what register_challenger checks before registering
            datasets.refuse_superseded(world.lake, spec.name, old)
        datasets.refuse_superseded(world.lake, spec.name, new)
        successor = read_json(world.lake.manifest(spec.name, new))
        assert successor["supersedes"] == old and successor["erasure"] == outcome.erasure_id
        assert len(datasets.load_version(world.lake, new, spec.name)) == successor["rows"]["published"]
        assert sorted(p.name for p in Path(world.lake.version_dir(spec.name, old)).iterdir()) == ["manifest.json"]
    window = read_json(world.lake.manifest(spec.name, outcome.superseded[world.versions[2]]))
    assert window["parents"] == [outcome.superseded[v] for v in world.versions[:2]]
    assert {m["dataset_version_id"] for m in datasets.published(world.lake, spec.name)} == set(
        outcome.superseded.values()
    )
    record = holdout.frozen_record(world.lake, spec.name)
    assert record["erasure"] == outcome.erasure_id and record["rows"] == len(
        holdout.frozen_holdout(world.lake, spec, pd.DataFrame(), "unused")[0]
    )


def test_the_ledger_names_the_subject_by_its_own_pseudonym(erased: tuple[World, Any]) -> None:
    world, _ = erased
    entries = world.ledger.entries("lending_club")
    assert [e["step"] for e in entries] == ["plan", "run"]
    assert {e["subject"] for e in entries} == {ledger_name(_subject(world.key), session_keys())}
    assert {e["person"] for e in entries} == {REQUEST.person}
    detail = json.loads(entries[1]["detail"])
    stores = {a["store"] for a in detail["artifacts"]}
    assert stores == {"raw", "staging", "validated", "quarantine", "curated", "holdout", "scores", "predictions"}
    text = json.dumps(entries)
    assert not key_as_value(world.key).search(text.encode())
    assert session_keys().pseudonym(world.key) not in text


def test_a_reingest_of_the_unchanged_sources_does_not_bring_the_subject_back(erased: tuple[World, Any]) -> None:
    world, _ = erased
    spec = load_spec("lending_club")
    for interval, extracts in zip(MONTHS, world.sources, strict=True):
        ingest(world.lake, spec, interval, extracts)
    assert plan(world.lake, spec, _subject(world.key), session_keys(), world.predictions, MODEL).places == []


def test_a_rerun_changes_nothing(erased: tuple[World, Any]) -> None:
    world, outcome = erased
    spec = load_spec("lending_club")
    files = {p: p.read_bytes() for p in Path(world.lake.root).rglob("*") if p.is_file()}
    again = run(world.lake, spec, _subject(world.key), session_keys(), world.ledger, REQUEST, world.predictions, MODEL)
    assert again.erasure_id == outcome.erasure_id and again.artifacts == []
    assert {p: p.read_bytes() for p in Path(world.lake.root).rglob("*") if p.is_file()} == files


def test_a_crash_between_successor_and_purge_recovers(tmp_path: Path) -> None:
    world = _world(tmp_path)
    spec = load_spec("lending_club")
    version = world.versions[1]
    frame = datasets.load_version(world.lake, version, spec.name)
    kept = frame[frame[spec.key] != session_keys().pseudonym(world.key)]
    successor = datasets.supersede(world.lake, spec.name, version, kept, "er-crashed")  # then the process died
    outcome = run(
        world.lake, spec, _subject(world.key), session_keys(), world.ledger, REQUEST, world.predictions, MODEL
    )
    assert outcome.superseded[version] == successor.version_id
    assert verify(world.lake, spec, _subject(world.key), session_keys(), world.ledger, world.predictions, MODEL) == []


def test_the_cli_runs_and_verify_exits_1_on_a_changed_ledger_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    world = _world(tmp_path)
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", Path(world.lake.root).as_uri())
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", world.predictions.as_uri())
    monkeypatch.setenv("CRISPFLOW_LEDGER_URL", world.ledger_url)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    mlf = mlflow.MlflowClient(tracking_uri=tracking)  # not the process-wide URI another test may have set
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # the CLI sets it: undone
    mlf.create_registered_model(MODEL)
    trained = mlf.create_model_version(MODEL, str(tmp_path / "model"), tags={DATASET_TAG: world.versions[2]})
    other = mlf.create_model_version(MODEL, str(tmp_path / "model"), tags={DATASET_TAG: "ds-unrelated"})
    base = ["--pipeline", "lending_club", "--key", world.key]
    assert main(["erase", "run", *base, "--ticket", "T-9"]) == 2  # no --yes: only the plan
    assert "not erased" in capsys.readouterr().out
    assert main(["erase", "run", *base, "--ticket", "T-9", "--yes", "--person", "dpo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["artifacts"] and [m["version"] for m in result["models"]] == [str(trained.version)]
    assert mlf.get_model_version(MODEL, trained.version).tags[PENDING] == result["erasure_id"]
    assert PENDING not in mlf.get_model_version(MODEL, other.version).tags
    assert main(["erase", "status", *base, "--json"]) == 0
    assert [e["step"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["plan", "run"]
    assert main(["erase", "verify", *base]) == 0
    assert "verified" in capsys.readouterr().out
    with sqlite3.connect(world.ledger_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE erasure_ledger SET person = 'someone else' WHERE seq = 1")
    assert main(["erase", "verify", *base]) == 1
    out = capsys.readouterr().out
    assert "entry 1" in out and world.key not in out


def test_a_later_erasure_flags_models_trained_before_an_earlier_one(tmp_path: Path) -> None:
    """Erasure A supersedes the window a model was trained on and the holdout another was judged on; erasure B of
    a second subject then supersedes A's successors. The models held B's rows too: B flags them (through the
    versions' `supersedes` and the holdout's `replaced`), and keeps A's earlier deadline, never a later one."""
    world = _world(tmp_path)
    spec, keys = load_spec("lending_club"), session_keys()
    mlf = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlf.create_registered_model(MODEL)
    first_holdout = holdout.frozen_record(world.lake, spec.name)["holdout_hash"]
    trained = mlf.create_model_version(MODEL, str(tmp_path / "m"), tags={DATASET_TAG: world.versions[2]})
    judged = mlf.create_model_version(MODEL, str(tmp_path / "m"), tags={HOLDOUT_TAG: first_holdout})
    cut = set(holdout.frozen_holdout(world.lake, spec, pd.DataFrame(), "unused")[0][spec.key])
    february = world.sources[1][0].frame[spec.key].astype(str)  # in the window; in the holdout if in `cut`
    second = next(k for k in february if k != world.key and keys.pseudonym(k) in cut)

    def flagging(deadline_days: int) -> Any:
        return lambda versions, holdouts, erasure_id: flag(mlf, MODEL, versions, holdouts, erasure_id, deadline_days)

    a = run(world.lake, spec, _subject(world.key), keys, world.ledger, REQUEST, world.predictions, MODEL,
            flagging(30))
    assert {m["version"] for m in a.models} == {str(trained.version), str(judged.version)}
    b = run(world.lake, spec, _subject(second), keys, world.ledger, Request("T-78", "LGPD", "dpo"),
            world.predictions, MODEL, flagging(60))
    assert {m["version"] for m in b.models} == {str(trained.version), str(judged.version)}
    assert {m["erasure"] for m in b.models} == {a.erasure_id}  # A's deadline is earlier: it stands
    tags = mlf.get_model_version(MODEL, trained.version).tags
    assert (tags[PENDING], tags[DEADLINE]) == (a.erasure_id, a.models[0]["deadline"])
    mlf.set_model_version_tag(MODEL, trained.version, DEADLINE, "2099-01-01")  # later than B's: B's replaces it
    flagged = flag(mlf, MODEL, {world.versions[2]}, set(), b.erasure_id, 60)
    assert flagged[0]["deadline"] < "2099-01-01" and flagged[0]["erasure"] == b.erasure_id


def test_a_key_that_is_nowhere_is_recorded_and_touches_nothing(tmp_path: Path) -> None:
    world = _world(tmp_path)
    files = {p: p.read_bytes() for p in Path(world.lake.root).rglob("*") if p.is_file()}
    outcome = run(
        world.lake,
        load_spec("lending_club"),
        _subject("987654321"),
        session_keys(),
        world.ledger,
        REQUEST,
        world.predictions,
        MODEL,
    )
    assert outcome.artifacts == [] and [e["step"] for e in world.ledger.entries()] == ["plan", "run"]
    changed = {p for p in Path(world.lake.root).rglob("*") if p.is_file() and files.get(p) != p.read_bytes()}
    assert all("/governance/suppressed/" in str(p) for p in changed) and len(changed) == 1


def test_retrain_after_erasure_follows_the_spec_and_trusts_only_the_ledger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`next_cycle` (the default) asks for no run; `immediate` asks for one on a window of the successors; an
    erasure the ledger does not record asks for nothing and fails naming it."""
    world = _world(tmp_path)
    spec = load_spec("lending_club")
    flagged = [{"model": MODEL, "version": "3", "deadline": "2027-01-01"}]
    outcome = run(world.lake, spec, _subject(world.key), session_keys(), world.ledger, REQUEST, world.predictions,
                  MODEL, lambda datasets, holdouts, erasure_id: flagged)
    event = {"pipeline": "lending_club", "erasure_id": outcome.erasure_id, "models": ["3"]}
    who = {"dag_id": "retrain_after_erasure", "run_id": "r"}

    later = plan_after_erasure([event], ledger=world.ledger, lake=world.lake, window_days=365, run=who)
    assert later["retrain"] is False and "next_cycle" in later["reason"] and later["models"] == ["3"]

    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    raw["governance"] = {"retrain": "immediate"}
    raw["training"]["min_rows"] = 100
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "lending_club.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(tmp_path / "pipelines"))
    now = plan_after_erasure([event], ledger=world.ledger, lake=world.lake, window_days=365, run=who)
    assert now["retrain"] is True and now["run_id"] == f"retrain_after_erasure__{outcome.erasure_id}"
    assert set(now["parents"]) <= set(outcome.superseded.values())
    assert datasets.load_version(world.lake, now["conf"]["dataset_version_id"], spec.name)[spec.key].isin(
        session_keys().all_pseudonyms(world.key)).sum() == 0

    with pytest.raises(ParamsError, match="er-forged"):
        plan_after_erasure([{**event, "erasure_id": "er-forged"}], ledger=world.ledger, lake=world.lake,
                           window_days=365, run=who)
