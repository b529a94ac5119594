"""The erasure ledger on SQLite and on the local PostgreSQL: append-only, hash-chained, idempotent per step, safe
under concurrent writers; `verify` finds a changed, deleted or reordered entry."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, update

from crispflow.governance.erasure_ledger import GENESIS, ErasureLedger, ErasureLedgerError, entry_hash


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path) -> Iterator[ErasureLedger]:
    if request.param == "sqlite":
        yield ErasureLedger(f"sqlite:///{tmp_path / 'erasure.db'}")
        return
    from support.servers import scratch_database

    with scratch_database() as db:  # a database of its own: verify() reads the whole chain
        yield ErasureLedger(db.sqlalchemy_url)


def record(ledger: ErasureLedger, step: str, ticket: str = "T-1", **detail) -> dict:
    return ledger.append(erasure_id=f"{ticket}/{step}", pipeline="lending_club", subject="hk1:" + "ab" * 16,
                         ticket=ticket, legal_basis="GDPR art. 17", person="alice", step=step, detail=detail)


def test_entries_chain_from_genesis_and_a_retry_is_the_same_entry(ledger) -> None:
    first = record(ledger, "planned", files=3)
    second = record(ledger, "erased", artifacts={"curated/v1/data.parquet": {"old": "a" * 64, "new": "purged"}})
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["entry_hash"]
    assert entry_hash(second) == second["entry_hash"]
    assert record(ledger, "erased", artifacts={"curated/v1/data.parquet": {"old": "a" * 64, "new": "purged"}}) \
        == ledger.find("T-1/erased")  # a retried task: no second entry
    assert len(ledger.entries()) == 2 and ledger.verify() == []
    with pytest.raises(ErasureLedgerError, match="other content"):
        record(ledger, "erased", artifacts={})


@pytest.mark.parametrize("tamper", ["content", "delete", "rehash"])
def test_verify_finds_tampering(ledger, tamper: str) -> None:
    for i in range(4):
        record(ledger, f"step{i}", n=i)
    t = ledger.table
    with ledger.engine.begin() as conn:
        if tamper == "content":
            conn.execute(update(t).where(t.c.seq == 2).values(person="mallory"))
        elif tamper == "delete":
            conn.execute(delete(t).where(t.c.seq == 3))
        else:  # change an entry and recompute its own hash: the next entry's link breaks
            entry = next(e for e in ledger.entries() if e["seq"] == 2) | {"ticket": "T-other"}
            conn.execute(update(t).where(t.c.seq == 2).values(ticket="T-other", entry_hash=entry_hash(entry)))
    problems = ledger.verify()
    expected = {"content": "entry 2: its content does not match its hash",
                "delete": "entries 3-3 are missing", "rehash": "entry 3: prev_hash does not match"}[tamper]
    assert any(expected in p for p in problems), problems


def test_concurrent_writers_keep_one_unbroken_chain(ledger) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(5):
                record(ledger, f"w{worker}-{i}", ticket=f"T-{uuid.uuid4().hex[:6]}")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert [e["seq"] for e in ledger.entries()] == list(range(1, 31)) and ledger.verify() == []
