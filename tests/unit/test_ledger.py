"""The promotion ledger's check-and-set on SQLite and on the local PostgreSQL: one winner, append-only, replayable."""

from __future__ import annotations

import threading
import uuid

import pytest

from crispflow.release import promotion
from crispflow.release.promotion import CONFIRMED, INTENT, Ledger, PromotionConflict, PromotionRefused, Transition

pytest_plugins = ["support.servers"]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path) -> Ledger:
    if request.param == "sqlite":
        return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    return Ledger(request.getfixturevalue("postgres_db").sqlalchemy_url)


@pytest.fixture
def m() -> str:
    """A model name of its own per test (the PostgreSQL database is shared by the module)."""
    return f"m-{uuid.uuid4().hex[:8]}"


def deploy(version: str, champion: str = "1") -> Transition:
    return promotion.deploy({"champion": champion}, version, strategy="canary", share=0.2, reason="test")


def test_entries_are_appended_in_order_with_their_moves(ledger: Ledger, m: str) -> None:
    ledger.append(m, f"{m}k1", promotion.cold_start({}, "1", "first"), {}, actor="t", person="ana", state=CONFIRMED)
    ledger.append(m, f"{m}k2", deploy("2"), {"champion": "1"}, actor="t", person="bo", state=CONFIRMED)
    entries = ledger.entries(m)
    assert [e["seq"] for e in entries] == [1, 2]
    assert [(e["person"], e["state"]) for e in entries] == [("ana", CONFIRMED), ("bo", CONFIRMED)]
    assert entries[1]["moves"] == {"canary": [None, "2"]}
    assert entries[1]["tags"] == {"crispflow.canary_share": "0.2"}
    assert ledger.state(m) == (2, {"champion": "1", "canary": "2"})
    assert ledger.find(f"{m}k2")["action"] == "deploy_canary"
    assert ledger.entries("other") == []


def test_a_stale_decision_is_refused(ledger: Ledger, m: str) -> None:
    ledger.append(m, f"{m}k1", promotion.cold_start({}, "1", "first"), {}, actor="t", state=CONFIRMED)
    ledger.append(m, f"{m}k2", promotion.Transition("blue_green", {"champion": "3", "previous": "1"},
                                                  {"champion": "1"}, "switch"), {}, actor="t", state=CONFIRMED)
    with pytest.raises(PromotionConflict, match="champion expected v1, is v3"):
        ledger.append(m, f"{m}k3", deploy("2", champion="1"), {}, actor="t")
    assert len(ledger.entries(m)) == 2


def test_concurrent_promotions_have_exactly_one_winner(ledger: Ledger, m: str) -> None:
    ledger.append(m, f"{m}k0", promotion.cold_start({}, "1", "first"), {}, actor="t", state=CONFIRMED)
    barrier, results = threading.Barrier(6), []

    def promote(i: int) -> None:
        barrier.wait()
        try:
            ledger.append(m, f"{m}race-{i}", promotion.Transition(
                "promote", {"champion": str(10 + i), "previous": "1"}, {"champion": "1"}, "race"), {}, actor="t")
            results.append("won")
        except PromotionConflict as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1, results
    assert all("aborting without moving anything" in r for r in results if r != "won")
    assert len(ledger.entries(m)) == 2


def test_transitions_refuse_impossible_moves() -> None:
    with pytest.raises(PromotionRefused, match="no champion"):
        promotion.deploy({}, "2", strategy="canary", share=0.1, reason="x")
    with pytest.raises(PromotionRefused, match="already is the champion"):
        promotion.deploy({"champion": "2"}, "2", strategy="canary", share=0.1, reason="x")
    with pytest.raises(PromotionRefused, match="share"):
        promotion.deploy({"champion": "1"}, "2", strategy="canary", share=1.5, reason="x")
    with pytest.raises(PromotionRefused, match="strategy"):
        promotion.deploy({"champion": "1"}, "2", strategy="yolo", share=0.1, reason="x")
    with pytest.raises(PromotionRefused, match="no previous"):
        promotion.rollback({"champion": "2"}, "x")
    with pytest.raises(PromotionConflict, match="nothing to promote"):
        promotion.promote_canary({"champion": "1", "canary": "3"}, "2", "x", {})
    with pytest.raises(PromotionRefused, match="not serving aliases"):
        Transition("promote", {"challenger": "2"}, {}, "x")


def test_decisions_trust_confirmed_entries_and_a_pending_intent_blocks_the_next(ledger: Ledger, m: str) -> None:
    ledger.append(m, f"{m}k1", promotion.cold_start({}, "1", "first"), {}, actor="t", person="ana", state=CONFIRMED)
    pending = ledger.append(m, f"{m}k2", deploy("2"), {}, actor="t", person="bo")
    assert pending["state"] == INTENT
    assert ledger.state(m) == (2, {"champion": "1"})  # the intent is not trusted yet
    assert [e["seq"] for e in ledger.pending(m)] == [2]
    with pytest.raises(PromotionConflict, match="ledger entry 2 \\(deploy_canary\\) is still pending"):
        ledger.append(m, f"{m}k3", deploy("3"), {}, actor="t")
    ledger.settle(f"{m}k2", CONFIRMED)
    ledger.settle(f"{m}k2", promotion.ABANDONED)  # a settled entry stays as it was
    assert ledger.state(m) == (2, {"champion": "1", "canary": "2"}) and ledger.pending(m) == []
    assert ledger.find(f"{m}k2")["state"] == CONFIRMED


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_ledger_from_before_states_and_persons_is_migrated(backend: str, tmp_path) -> None:
    """The old schema (no `state`, no `person`) gains both columns; its entries read as confirmed, person unknown."""
    import contextlib

    from sqlalchemy import create_engine, text
    from support.servers import scratch_database

    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
               else stack.enter_context(scratch_database()).sqlalchemy_url)
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(
                "CREATE TABLE promotion_ledger (model VARCHAR(250) NOT NULL, seq INTEGER NOT NULL, "
                "move_key VARCHAR(500) NOT NULL UNIQUE, at TIMESTAMP NOT NULL, action VARCHAR(40) NOT NULL, "
                "from_version VARCHAR(40), to_version VARCHAR(40), moves TEXT NOT NULL, tags TEXT NOT NULL, "
                "reason TEXT NOT NULL, evidence TEXT NOT NULL, actor VARCHAR(500) NOT NULL, PRIMARY KEY (model, seq))"))
            conn.execute(text(
                "INSERT INTO promotion_ledger VALUES ('m', 1, 'old', '2026-01-01 00:00:00', 'cold_start', NULL, '1', "
                "'{\"champion\": [null, \"1\"]}', '{}', 'first', '{}', 'dag/r/bless')"))
        engine.dispose()
        ledger = Ledger(url)
        Ledger(url)  # a second process finds the columns there
        old = ledger.entries("m")[0]
        assert (old["state"], old["person"]) == (CONFIRMED, promotion.LEGACY_PERSON)
        assert ledger.state("m") == (1, {"champion": "1"})
        ledger.append("m", "new", deploy("2"), {}, actor="t", person="ana")
        assert ledger.find("new")["person"] == "ana" and ledger.pending("m")[0]["seq"] == 2
        ledger.engine.dispose()
