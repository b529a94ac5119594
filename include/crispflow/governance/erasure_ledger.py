"""The erasure ledger: an append-only, hash-chained record of every erasure request and what it did.

Each entry names the subject only by its pseudonym under the ledger's own key (never the raw key, never the data's
pseudonym), the ticket, the legal basis, the person, the step, and a JSON detail (per artifact the old hash and
the new one or "purged", the model versions flagged). Entries are appended as `seq = last + 1` in one transaction
(a concurrent writer collides on the primary key and retries on the new tail), and chained:
`entry_hash = sha256(prev_hash || canonical JSON of the entry)`, the first entry's prev_hash being 64 zeros.
`verify` recomputes the chain from the stored rows, so changing, deleting or reordering any entry is found.
Every hashed field is stored as text or an integer, so the rows give back exactly the bytes that were hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from crispflow.errors import CrispflowError
from crispflow.lake import canonical_json, json_safe
from crispflow.sql_tables import open_table

GENESIS = "0" * 64
TABLE = "erasure_ledger"
HASHED = ("seq", "erasure_id", "at", "pipeline", "subject", "ticket", "legal_basis", "person", "step", "detail",
          "prev_hash")
APPEND_ATTEMPTS = 20


class ErasureLedgerError(CrispflowError):
    """The ledger cannot take an entry (a step recorded twice with other content, no free sequence number)."""


def _table(metadata: Any) -> Any:
    from sqlalchemy import Column, Integer, String, Table, Text

    return Table(
        TABLE, metadata,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("erasure_id", String(500), nullable=False, unique=True),  # one per request and step: idempotency
        Column("at", String(40), nullable=False),  # ISO 8601 UTC, as hashed
        Column("pipeline", String(250), nullable=False),
        Column("subject", String(100), nullable=False),  # the pseudonym under the ledger's key
        Column("ticket", String(250), nullable=False),
        Column("legal_basis", String(250), nullable=False),
        Column("person", String(250), nullable=False),
        Column("step", String(40), nullable=False),
        Column("detail", Text, nullable=False),  # canonical JSON, as hashed
        Column("prev_hash", String(64), nullable=False),
        Column("entry_hash", String(64), nullable=False),
    )


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256(prev_hash || canonical JSON of the hashed fields) as hex."""
    body = canonical_json({k: entry[k] for k in HASHED if k != "prev_hash"})
    return hashlib.sha256(entry["prev_hash"].encode() + body).hexdigest()


class ErasureLedger:
    """The erasure ledger on a SQLAlchemy URL (SQLite locally, PostgreSQL in production)."""

    def __init__(self, url: str) -> None:
        self.engine, self.table = open_table(url, _table)

    def entries(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Every entry (of one pipeline), oldest first."""
        from sqlalchemy import select

        query = select(self.table).order_by(self.table.c.seq)
        if pipeline is not None:
            query = query.where(self.table.c.pipeline == pipeline)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def find(self, erasure_id: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.erasure_id == erasure_id)).first()
        return dict(row._mapping) if row else None

    def append(self, *, erasure_id: str, pipeline: str, subject: str, ticket: str, legal_basis: str, person: str,
               step: str, detail: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry at the tail of the chain; the entry already recorded under `erasure_id` if a retry
        brings the same content again (ErasureLedgerError if it brings other content)."""
        from sqlalchemy import func, select
        from sqlalchemy.exc import IntegrityError

        content = {"erasure_id": erasure_id, "pipeline": pipeline, "subject": subject, "ticket": ticket,
                   "legal_basis": legal_basis, "person": person, "step": step,
                   "detail": canonical_json(json_safe(dict(detail))).decode()}
        for _ in range(APPEND_ATTEMPTS):
            if (found := self.find(erasure_id)) is not None:
                if any(found[k] != v for k, v in content.items()):
                    raise ErasureLedgerError(f"erasure ledger: {erasure_id!r} is recorded already (entry "
                                             f"{found['seq']}) with other content")
                return found
            try:
                with self.engine.begin() as conn:
                    last = conn.execute(select(func.max(self.table.c.seq))).scalar() or 0
                    prev = conn.execute(select(self.table.c.entry_hash).where(self.table.c.seq == last)).scalar() \
                        if last else GENESIS
                    entry = {"seq": last + 1, "at": datetime.now(UTC).isoformat(), "prev_hash": prev, **content}
                    entry["entry_hash"] = entry_hash(entry)
                    conn.execute(self.table.insert().values(**entry))
                return entry
            except IntegrityError:  # another writer took this seq (or recorded this erasure_id): look again
                continue
        raise ErasureLedgerError(f"erasure ledger: no free entry after {APPEND_ATTEMPTS} attempts (too many "
                                 "concurrent writers)")

    def verify(self) -> list[str]:
        """Problems of the chain, oldest first (empty: every entry is as written, none missing or moved)."""
        problems: list[str] = []
        prev, last = GENESIS, 0
        for entry in self.entries():
            if entry["seq"] != last + 1:
                problems.append(f"entries {last + 1}-{entry['seq'] - 1} are missing")
            if entry["prev_hash"] != prev:
                problems.append(f"entry {entry['seq']}: prev_hash does not match the hash of the entry before it")
            if entry_hash(entry) != entry["entry_hash"]:
                problems.append(f"entry {entry['seq']}: its content does not match its hash (changed after writing)")
            try:
                json.loads(entry["detail"])
            except ValueError:
                problems.append(f"entry {entry['seq']}: detail is not JSON")
            prev, last = entry["entry_hash"], entry["seq"]
        return problems
