"""Alias moves through a promotion ledger: every move of `champion`, `canary`, `shadow` and `previous` is recorded
append-only (who — the person and the task —, when, from → to, why, evidence), and the ledger and the registry
cannot silently disagree.

MLflow has no compare-and-set on aliases, so the ledger provides one: a transition states which versions it expects
the aliases to hold, and is appended as entry `seq = last + 1` in one transaction; a concurrent promoter either
collides on that primary key or finds the state changed, and aborts with `PromotionConflict`.

Protocol (intent → apply → confirm): the entry is appended as an `intent`; the registry is written (tags, then the
other aliases, deletions, and `champion` LAST — the commit point, one atomic write — then the entry as an MLflow
artifact and version tag); the aliases are read back and the entry marked `confirmed`. A failure anywhere leaves the
intent pending and `champion` either unchanged (failed before its write) or moved (the rest already done), never
half. Decisions trust only confirmed entries; before any new transition the pending tail is reconciled: completed
(every write is idempotent), or, when its versions are gone, the aliases restored and the entry `abandoned`. If the
registry cannot be reached the new promotion fails and nothing is recorded. Each transition has a `move_key` (the
Airflow task that made it): a retried task finds its entry and completes it, so an alias is never moved twice.

`verify` compares the confirmed ledger with the registry: a pending intent, or an alias the registry holds that the
ledger does not explain (moved in MLflow directly), is a `Divergence`; `record_outside_moves` records the latter as an
`outside_move` entry by an unknown person. The ledger is a SQL table (SQLite locally, PostgreSQL in production).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError
from crispflow.lake import json_safe
from crispflow.model import registry
from crispflow.model.registry import (
    CANARY,
    CANARY_SHARE_TAG,
    CHAMPION,
    PREVIOUS,
    SHADOW,
    SHADOW_SHARE_TAG,
    RegistryError,
)
from crispflow.pools import PROMOTIONS
from crispflow.sql_tables import open_table

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

POOL = PROMOTIONS  # the Airflow pool (one slot) every alias move runs in; `crispflow up` creates it
SERVING_ALIASES = (CHAMPION, CANARY, SHADOW, PREVIOUS)
OUTSIDE_MOVE = "outside_move"
ACTIONS = ("cold_start", "deploy_canary", "deploy_shadow", "blue_green", "promote", "abort_canary", "rollback",
           OUTSIDE_MOVE)
INTENT, CONFIRMED, ABANDONED = "intent", "confirmed", "abandoned"
UNKNOWN_PERSON = "unknown (registry write outside crispflow)"
LEGACY_PERSON = "unknown (recorded before persons were)"


class PromotionConflict(CrispflowError):
    """Another promotion moved the aliases first (or concurrently): this one aborts without moving anything."""


class PromotionRefused(CrispflowError):
    """The transition is not allowed (version not blessed or incomplete, no previous champion, ...)."""


class PromotionIncomplete(CrispflowError):
    """The registry did not take a recorded move (read back differs): the intent stays pending; retrying (or the
    next promotion's reconcile) completes it."""


class OutsideMove(CrispflowError):
    """Aliases were moved in the registry outside crispflow; recorded in the ledger, reported once."""


@dataclass(frozen=True)
class Transition:
    """What to do: alias → version (None deletes the alias), the registered-model tags to set, and the state
    the transition was decided on (`expect`: alias → version or None), checked against the ledger."""

    action: str
    moves: Mapping[str, str | None]
    expect: Mapping[str, str | None]
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise PromotionRefused(f"unknown promotion action {self.action!r}; known: {', '.join(ACTIONS)}")
        unknown = set(self.moves) - set(SERVING_ALIASES)
        if unknown:
            raise PromotionRefused(f"aliases {sorted(unknown)} are not serving aliases {SERVING_ALIASES}")


@dataclass(frozen=True)
class Divergence:
    """The ledger and the registry disagree on `alias`: `kind` is `pending` (an intent not yet confirmed, seq
    given) or `outside_move` (the registry holds what no ledger entry put there)."""

    model: str
    alias: str
    kind: str
    ledger: str | None
    registry: str | None
    seq: int | None = None

    def __str__(self) -> str:
        if self.kind == "pending":
            return (f"{self.model}: {self.alias} pending in ledger entry {self.seq} (to {_v(self.ledger)}), "
                    f"registry holds {_v(self.registry)}")
        return (f"{self.model}: {self.alias} is {_v(self.registry)} in the registry but {_v(self.ledger)} in the "
                "ledger (moved outside crispflow)")


def _table(metadata: Any) -> Any:
    from sqlalchemy import Column, DateTime, Integer, String, Table, Text

    return Table(
        "promotion_ledger", metadata,
        Column("model", String(250), primary_key=True),
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("move_key", String(500), nullable=False, unique=True),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("action", String(40), nullable=False),
        Column("from_version", String(40)),  # the primary alias's version before (champion for promote/rollback)
        Column("to_version", String(40)),
        Column("moves", Text, nullable=False),  # JSON {alias: [before, after]}
        Column("tags", Text, nullable=False),  # JSON registered-model tags set
        Column("reason", Text, nullable=False),
        Column("evidence", Text, nullable=False),  # JSON
        Column("actor", String(500), nullable=False),  # dag_id/run_id/task_id, or the CLI user
        Column("state", String(20)),  # intent | confirmed | abandoned (NULL: written before states, confirmed)
        Column("person", String(500)),  # the person the move was made for (NULL: written before persons)
    )


ADDED_COLUMNS = {"state": "VARCHAR(20)", "person": "VARCHAR(500)"}


class Ledger:
    """The append-only promotion ledger on a SQLAlchemy URL (`Settings.ledger_url`)."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        """`read_only`: a reader (the UI plugin's SELECT-only role) that never creates or migrates the table and
        reads a ledger whose table does not exist yet as empty."""
        self.url = url
        self.read_only = read_only
        self.engine: Engine
        self.engine, self.table = open_table(url, _table, read_only=read_only)
        if not read_only:
            self._migrate()

    def _migrate(self) -> None:
        """Forward migration of a ledger created before entry states and persons: add the missing columns."""
        from sqlalchemy import inspect, text
        from sqlalchemy.exc import OperationalError, ProgrammingError

        have = {c["name"] for c in inspect(self.engine).get_columns("promotion_ledger")}
        for column, sql_type in ADDED_COLUMNS.items():
            if column in have:
                continue
            try:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE promotion_ledger ADD COLUMN {column} {sql_type}"))
            except (OperationalError, ProgrammingError):  # added concurrently by another process
                if column not in {c["name"] for c in inspect(self.engine).get_columns("promotion_ledger")}:
                    raise

    def entries(self, model: str, conn: Any = None) -> list[dict[str, Any]]:
        """Every entry of `model`, oldest first, JSON columns decoded."""
        from sqlalchemy import select

        if conn is None:
            with self.engine.connect() as own:
                if self.read_only and not self._exists(own):
                    return []
                return self.entries(model, own)
        rows = conn.execute(select(self.table).where(self.table.c.model == model).order_by(self.table.c.seq))
        return [_decode(row._mapping) for row in rows]

    def _exists(self, conn: Any) -> bool:
        from sqlalchemy import inspect

        return inspect(conn).has_table(self.table.name)

    def find(self, move_key: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.move_key == move_key)).first()
        return _decode(row._mapping) if row else None

    def state(self, model: str, conn: Any = None) -> tuple[int, dict[str, str | None]]:
        """(last seq, alias → version) as the CONFIRMED entries recorded it; aliases they never moved are absent."""
        entries = self.entries(model, conn)
        return (entries[-1]["seq"] if entries else 0), _confirmed_aliases(entries)

    def pending(self, model: str, conn: Any = None) -> list[dict[str, Any]]:
        """The entries recorded as intents and neither confirmed nor abandoned yet (at most the tail)."""
        return [e for e in self.entries(model, conn) if e["state"] == INTENT]

    def append(self, model: str, move_key: str, transition: Transition, before: Mapping[str, str | None],
               actor: str, *, person: str = LEGACY_PERSON, state: str = INTENT) -> dict[str, Any]:
        """Check-and-set: append the transition if the aliases still hold what it expects and no intent is pending;
        else PromotionConflict."""
        from sqlalchemy.exc import IntegrityError

        t = self.table
        last = 0
        try:
            with self.engine.begin() as conn:
                last, recorded = self.state(model, conn)
                waiting = self.pending(model, conn)
                if waiting:
                    raise PromotionConflict(
                        f"{model}: ledger entry {waiting[0]['seq']} ({waiting[0]['action']}) is still pending "
                        "(reconcile it first); aborting without moving anything")
                current = {**before, **recorded}
                stale = {a: (v, current.get(a)) for a, v in transition.expect.items() if current.get(a) != v}
                if stale:
                    raise PromotionConflict(
                        f"{model}: aliases moved since this promotion was decided "
                        + ", ".join(f"{a} expected {_v(v)}, is {_v(now)}" for a, (v, now) in stale.items())
                        + f" (ledger entry {last}); aborting without moving anything")
                primary = next(iter(transition.moves))
                entry = {
                    "model": model, "seq": last + 1, "move_key": move_key, "at": datetime.now(UTC),
                    "action": transition.action, "from_version": current.get(primary),
                    "to_version": transition.moves[primary],
                    "moves": json.dumps({a: [current.get(a), v] for a, v in transition.moves.items()}),
                    "tags": json.dumps(dict(transition.tags)), "reason": transition.reason,
                    "evidence": json.dumps(json_safe(dict(transition.evidence)), default=str), "actor": actor,
                    "state": state, "person": person,
                }
                conn.execute(t.insert().values(**entry))
        except IntegrityError as exc:
            if self.find(move_key):  # our own earlier try recorded it (a retry racing itself)
                return self.find(move_key)  # type: ignore[return-value]
            raise PromotionConflict(f"{model}: another promotion was recorded concurrently as ledger entry "
                                    f"{last + 1}; aborting without moving anything") from exc
        return _decode(entry)

    def settle(self, move_key: str, state: str) -> None:
        """Mark a pending intent `confirmed` or `abandoned` (a no-op for a settled entry)."""
        from sqlalchemy import update

        t = self.table
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.move_key == move_key, t.c.state == INTENT).values(state=state))


def _confirmed_aliases(entries: list[dict[str, Any]]) -> dict[str, str | None]:
    aliases: dict[str, str | None] = {}
    for entry in entries:
        if entry["state"] == CONFIRMED:
            aliases.update({alias: after for alias, (_, after) in entry["moves"].items()})
    return aliases


def _v(version: str | None) -> str:
    return f"v{version}" if version else "unset"


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("moves", "tags", "evidence"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    at = out.get("at")
    if isinstance(at, datetime):
        out["at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
    out["state"] = out.get("state") or CONFIRMED  # entries from before the protocol were written after the move
    out["person"] = out.get("person") or LEGACY_PERSON
    return out


def registry_state(mlf: MlflowClient, model: str) -> dict[str, str | None]:
    """The serving aliases as the registry holds them now (an unreachable registry raises, never reads as unset)."""
    state: dict[str, str | None] = {}
    for alias in SERVING_ALIASES:
        mv = registry.alias_version(mlf, model, alias, strict=True)
        state[alias] = str(mv.version) if mv is not None else None
    return state


def current_state(mlf: MlflowClient, ledger: Ledger, model: str) -> dict[str, str | None]:
    """The aliases as the confirmed ledger recorded them (the registry for aliases the ledger never moved)."""
    return {**registry_state(mlf, model), **ledger.state(model)[1]}


def apply(mlf: MlflowClient, ledger: Ledger, model: str, transition: Transition | None, *, move_key: str,
          actor: str, person: str) -> dict[str, Any]:
    """Reconcile the ledger's tail, record the transition as an intent (check-and-set), move the aliases and set
    the tags in MLflow, read them back and confirm the entry.

    Idempotent per `move_key`: a retry finds its entry and completes it if still pending (`transition` may then be
    None). Versions must be complete (artifact hash recorded) before anything is recorded. Outside moves found on
    the way are recorded first (`record_outside_moves`), so a transition decided on stale aliases conflicts.
    """
    existing = ledger.find(move_key)
    if existing is None:
        if transition is None:
            raise PromotionRefused(f"no ledger entry for {move_key!r} and no transition to record")
        for alias, version in transition.moves.items():
            if version is not None:
                _require_complete(mlf, model, version, alias)
        reconcile(mlf, ledger, model)
        record_outside_moves(mlf, ledger, model, actor=actor)
        entry = ledger.append(model, move_key, transition, registry_state(mlf, model), actor, person=person)
        replayed = False
    else:
        entry, replayed = existing, True
        if entry["state"] != INTENT:  # confirmed (or abandoned) already: nothing left to do
            return {**entry, "replayed": True, "applied": entry["state"] == CONFIRMED}
    entry = _complete(mlf, ledger, model, entry)
    return {**entry, "replayed": replayed, "applied": entry["state"] == CONFIRMED}


def reconcile(mlf: MlflowClient, ledger: Ledger, model: str) -> list[dict[str, Any]]:
    """Settle every pending intent of `model`: complete it (or abandon it, aliases restored, when its versions are
    gone). Registry errors propagate: while the registry cannot be reached nothing new may be recorded."""
    return [_complete(mlf, ledger, model, entry) for entry in ledger.pending(model)]


def _complete(mlf: MlflowClient, ledger: Ledger, model: str, entry: dict[str, Any]) -> dict[str, Any]:
    try:
        _apply_registry(mlf, model, entry)
    except (RegistryError, PromotionRefused) as exc:  # a version became incomplete: restore, abandon
        log.warning("%s: ledger entry %s cannot be completed (%s): aliases restored, entry abandoned",
                    model, entry["seq"], exc)
        _apply_registry(mlf, model, entry, undo=True)
        ledger.settle(entry["move_key"], ABANDONED)
        return {**entry, "state": ABANDONED}
    except Exception as exc:
        if _missing(exc):
            log.warning("%s: ledger entry %s names a version that is gone: aliases restored, entry abandoned",
                        model, entry["seq"])
            _apply_registry(mlf, model, entry, undo=True)
            ledger.settle(entry["move_key"], ABANDONED)
            return {**entry, "state": ABANDONED}
        raise
    _record_in_mlflow(mlf, model, entry)
    now = registry_state(mlf, model)
    wrong = {a: (after, now.get(a)) for a, (_, after) in entry["moves"].items() if now.get(a) != after}
    if wrong:
        raise PromotionIncomplete(
            f"{model}: after ledger entry {entry['seq']} the registry holds "
            + ", ".join(f"{a} {_v(got)} (expected {_v(want)})" for a, (want, got) in wrong.items())
            + "; the entry stays pending and is completed by the next try")
    ledger.settle(entry["move_key"], CONFIRMED)
    return {**entry, "state": CONFIRMED}


def _missing(exc: Exception) -> bool:
    """An MLflow error saying a model version does not exist (not a transport or auth error)."""
    code = getattr(exc, "error_code", None)
    return code == "RESOURCE_DOES_NOT_EXIST"


def _require_complete(mlf: MlflowClient, model: str, version: str, alias: str) -> None:
    mv = mlf.get_model_version(model, version)
    if mv.status != "READY" or registry.SHA_TAG not in mv.tags:
        raise PromotionRefused(f"{model} v{version} is not complete (status {mv.status}, no artifact hash): "
                               f"alias {alias!r} not moved")


def _apply_registry(mlf: MlflowClient, model: str, entry: Mapping[str, Any], *, undo: bool = False) -> None:
    """Tags first (a canary share before the canary alias), then the other aliases, deletions, and `champion` last:
    the commit point of the move, so a failure leaves the champion unchanged or the move complete. Every write is
    idempotent (a retry repeats it). `undo` restores each alias's `before` (tags are left as set)."""
    if not undo:
        for key, value in entry["tags"].items():
            mlf.set_registered_model_tag(model, key, str(value))
    order = {PREVIOUS: 0, SHADOW: 1, CANARY: 2}
    targets = {alias: (before if undo else after) for alias, (before, after) in entry["moves"].items()}
    moves = sorted(targets.items(), key=lambda kv: (kv[0] == CHAMPION, kv[1] is None, order.get(kv[0], 3)))
    for alias, version in moves:
        if version is None:
            _delete_alias(mlf, model, alias)
        else:
            registry.set_alias(mlf, model, alias, str(version))


def _delete_alias(mlf: MlflowClient, model: str, alias: str) -> None:
    """Delete an alias; an alias already absent is fine, any other error propagates (it is read back anyway)."""
    if registry.alias_version(mlf, model, alias, strict=True) is None:
        return
    mlf.delete_registered_model_alias(model, alias)


def _record_in_mlflow(mlf: MlflowClient, model: str, entry: Mapping[str, Any]) -> None:
    """The entry as JSON in the run of the version it concerns, and tags on that version (action and person)."""
    version = entry["to_version"] or entry["from_version"]
    if version is None:
        return
    mv = mlf.get_model_version(model, str(version))
    record = {**entry, "state": CONFIRMED}
    mlf.log_text(mv.run_id, json.dumps(json_safe(dict(record)), indent=2, default=str),
                 f"promotions/{entry['seq']:05d}-{entry['action']}.json")
    mlf.set_model_version_tag(model, str(version), f"crispflow.ledger.{entry['seq']}", entry["action"])
    mlf.set_model_version_tag(model, str(version), f"crispflow.ledger.{entry['seq']}.person", entry["person"])


def verify(mlf: MlflowClient, ledger: Ledger, model: str) -> list[Divergence]:
    """Where the ledger and the registry disagree: pending intents, and aliases the registry holds that the
    confirmed ledger does not (an alias the ledger never moved counts when the registry has it set)."""
    for _ in range(5):  # a consistent snapshot: the ledger unchanged while the registry was read
        seen = ledger.entries(model)
        now = registry_state(mlf, model)
        if ledger.entries(model) == seen:
            break
    recorded = _confirmed_aliases(seen)
    found: list[Divergence] = []
    explained: set[str] = set()
    for entry in (e for e in seen if e["state"] == INTENT):
        for alias, (_, after) in entry["moves"].items():
            explained.add(alias)
            found.append(Divergence(model, alias, "pending", after, now.get(alias), entry["seq"]))
    for alias in SERVING_ALIASES:
        if alias in explained:
            continue
        if recorded.get(alias) != now.get(alias):
            found.append(Divergence(model, alias, OUTSIDE_MOVE, recorded.get(alias), now.get(alias)))
    return found


def record_outside_moves(mlf: MlflowClient, ledger: Ledger, model: str, *, actor: str) -> dict[str, Any] | None:
    """Record what the registry holds but the confirmed ledger does not as one `outside_move` entry (person
    unknown), so the ledger again agrees with what is served; None when nothing moved outside crispflow."""
    outside = [d for d in verify(mlf, ledger, model) if d.kind == OUTSIDE_MOVE]
    if not outside:
        return None
    last, recorded = ledger.state(model)
    moves = {d.alias: d.registry for d in outside}
    described = ", ".join(f"{d.alias} {_v(d.ledger)} → {_v(d.registry)}" for d in outside)
    log.warning("%s: aliases moved outside crispflow: %s (recorded in the ledger)", model, described)
    transition = Transition(OUTSIDE_MOVE, moves, {}, f"registry moved outside crispflow: {described}",
                            {"detected_by": actor})
    before = {alias: recorded.get(alias) for alias in SERVING_ALIASES}
    return ledger.append(model, f"{actor}/{OUTSIDE_MOVE}/{last + 1}", transition, before, actor,
                         person=UNKNOWN_PERSON, state=CONFIRMED)


def check_outside_moves(mlf: MlflowClient, ledger: Ledger, model: str, *, actor: str) -> None:
    """Record an outside move (`record_outside_moves`) and raise OutsideMove naming the aliases and versions, so
    the run that found it fails once and alerts; the next run finds the ledger agreeing and proceeds."""
    entry = record_outside_moves(mlf, ledger, model, actor=actor)
    if entry is not None:
        described = ", ".join(f"{a} {_v(b)} → {_v(c)}" for a, (b, c) in entry["moves"].items())
        raise OutsideMove(f"{model}: aliases were moved in the registry outside crispflow ({described}); recorded "
                          f"as ledger entry {entry['seq']} by an unknown person — check who moved them")


# --------------------------------------------------------------------------- the transitions crispflow makes


def is_blessed(mlf: MlflowClient, model: str, version: str) -> bool:
    return mlf.get_model_version(model, version).tags.get("crispflow.blessed") == "true"


def cold_start(state: Mapping[str, str | None], version: str, reason: str) -> Transition:
    return Transition("cold_start", {CHAMPION: version}, {CHAMPION: None}, reason)


def deploy(state: Mapping[str, str | None], version: str, *, strategy: str, share: float, reason: str,
           evidence: Mapping[str, Any] | None = None) -> Transition:
    """canary: `canary` → version at `share` of entities; shadow: `shadow` → version mirroring `share` of requests;
    blue_green: `champion` → version at once (the old champion kept as `previous`)."""
    champion = state.get(CHAMPION)
    if champion is None:
        raise PromotionRefused("there is no champion to deploy against (the first blessed model becomes champion)")
    if version == champion:
        raise PromotionRefused(f"v{version} already is the champion")
    if not 0.0 < share <= 1.0:
        raise PromotionRefused(f"traffic share must be in (0, 1], got {share}")
    evidence = evidence or {}
    if strategy == "canary":
        return Transition("deploy_canary", {CANARY: version}, {CHAMPION: champion, CANARY: state.get(CANARY)},
                          reason, evidence, {CANARY_SHARE_TAG: repr(share)})
    if strategy == "shadow":
        return Transition("deploy_shadow", {SHADOW: version}, {CHAMPION: champion, SHADOW: state.get(SHADOW)},
                          reason, evidence, {SHADOW_SHARE_TAG: repr(share)})
    if strategy == "blue_green":
        return Transition("blue_green", {CHAMPION: version, PREVIOUS: champion, CANARY: None},
                          {CHAMPION: champion}, reason, evidence, {CANARY_SHARE_TAG: "0"})
    raise PromotionRefused(f"unknown deployment strategy {strategy!r}: canary, shadow or blue_green")


def promote_canary(state: Mapping[str, str | None], canary: str, reason: str,
                   evidence: Mapping[str, Any]) -> Transition:
    """canary → champion; the old champion kept as `previous`; the canary alias and share cleared."""
    champion = state.get(CHAMPION)
    if state.get(CANARY) != canary:
        raise PromotionConflict(f"canary is {_v(state.get(CANARY))}, not v{canary}: nothing to promote")
    return Transition("promote", {CHAMPION: canary, PREVIOUS: champion, CANARY: None},
                      {CHAMPION: champion, CANARY: canary}, reason, evidence, {CANARY_SHARE_TAG: "0"})


def abort_canary(state: Mapping[str, str | None], canary: str, reason: str,
                 evidence: Mapping[str, Any]) -> Transition:
    """A failed canary: its alias and traffic share removed; the champion keeps serving everyone."""
    if state.get(CANARY) != canary:
        raise PromotionConflict(f"canary is {_v(state.get(CANARY))}, not v{canary}: nothing to roll back")
    return Transition("abort_canary", {CANARY: None}, {CANARY: canary}, reason, evidence, {CANARY_SHARE_TAG: "0"})


def rollback(state: Mapping[str, str | None], reason: str) -> Transition:
    """`champion` back to `previous` (and `previous` cleared, so a second click cannot bounce back and forth)."""
    champion, previous = state.get(CHAMPION), state.get(PREVIOUS)
    if previous is None:
        raise PromotionRefused("there is no previous champion to roll back to")
    return Transition("rollback", {CHAMPION: previous, PREVIOUS: None, CANARY: None},
                      {CHAMPION: champion, PREVIOUS: previous}, reason, {"rolled_back": champion},
                      {CANARY_SHARE_TAG: "0"})


# --------------------------------------------------------------------------- the moves the release tasks make

ROLLED_BACK_TAG = "crispflow.rolled_back"


def entry_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger entry as a task reports it (small, JSON-safe): seq, action, versions, moves, reason, person,
    state, replayed."""
    return {k: entry[k] for k in ("seq", "action", "from_version", "to_version", "moves", "reason", "person",
                                  "state", "replayed")}


def deploy_version(mlf: MlflowClient, ledger: Ledger, model: str, version: str, *, strategy: str, share: float,
                   reason: str, move_key: str, person: str) -> dict[str, Any]:
    """Put a blessed `version` live beside the champion with `strategy` (see `deploy`), once per `move_key`.

    Nothing to do — strategy `none`, a version that is not blessed, or one that is the champion already (cold
    start) — comes back as `{"skipped": why}`; otherwise the ledger entry's summary. A retry (an entry exists
    for `move_key`) decides nothing again: it only completes the registry moves.
    """
    transition = None
    if ledger.find(move_key) is None:  # first try: is there anything to do?
        if strategy == "none":
            return {"skipped": "deployment strategy 'none': the version stays `challenger`"}
        state = current_state(mlf, ledger, model)
        if not is_blessed(mlf, model, version):
            return {"skipped": f"{model} v{version} is not blessed: not deployed"}
        if state.get(CHAMPION) in (None, version):
            return {"skipped": f"{model} v{version} is the champion already (cold start): no canary needed"}
        transition = deploy(state, version, strategy=strategy, share=share, reason=reason,
                            evidence={"verdict_blessed": True})
    return entry_summary(apply(mlf, ledger, model, transition, move_key=move_key, actor=move_key, person=person))


def promote_first_blessed(mlf: MlflowClient, ledger: Ledger, model: str, version: str, *,
                          run_key: str, person: str) -> dict[str, Any]:
    """The first blessed model of a pipeline becomes `champion` (cold start); later ones stay `challenger` for
    the canary. Once per training run (`run_key`): a retry only completes the recorded move."""
    champion = registry.alias_version(mlf, model, CHAMPION, strict=True)
    if not is_blessed(mlf, model, version):
        return {"action": "none", "reason": "not blessed", "version": version}
    if champion is not None and str(champion.version) != version:
        return {"action": "none", "reason": f"champion v{champion.version} exists: canary decides", "version": version}
    key = f"{run_key}/cold_start/v{version}"
    transition = None if ledger.find(key) else cold_start(current_state(mlf, ledger, model), version,
                                                          "first blessed model")
    apply(mlf, ledger, model, transition, move_key=key, actor=run_key, person=person)
    return {"action": "champion", "version": version}


def rollback_champion(mlf: MlflowClient, ledger: Ledger, model: str, reason: str, *,
                      move_key: str, person: str, expected_champion: str | None = None) -> dict[str, Any]:
    """`champion` back to `previous` (see `rollback`), once per `move_key`; the rolled-back version is tagged
    `crispflow.rolled_back` with the move key. Returns the ledger entry's summary.

    `expected_champion`: the champion the person saw when deciding (a page's button sends it); if the champion is
    another version now, PromotionConflict naming both, nothing moved (None: not checked)."""
    transition = None
    if ledger.find(move_key) is None:
        state = current_state(mlf, ledger, model)
        _check_shown(model, state, {CHAMPION: expected_champion}, "rolled back")
        transition = rollback(state, reason)
    entry = apply(mlf, ledger, model, transition, move_key=move_key, actor=move_key, person=person)
    rolled_back = entry["moves"][CHAMPION][0]
    if rolled_back:
        mlf.set_model_version_tag(model, str(rolled_back), ROLLED_BACK_TAG, move_key)
    return entry_summary(entry)


def _check_shown(model: str, state: Mapping[str, str | None], shown: Mapping[str, str | None], what: str) -> None:
    """PromotionConflict naming what was shown and what is now, for each alias in `shown` whose expected version
    (not None) differs from the aliases' current state: the person decided on a stale view."""
    stale = {alias: (str(want), state.get(alias)) for alias, want in shown.items()
             if want is not None and str(want) != state.get(alias)}
    if stale:
        described = ", ".join(f"{alias} is {_v(now)}, not v{want} as shown" for alias, (want, now) in stale.items())
        raise PromotionConflict(f"{model}: {described} (moved since the decision was made): nothing {what}")


def canary_deployed_at(ledger: Ledger, model: str, canary: str) -> datetime | None:
    """When `canary` was last deployed as the canary (its last confirmed `deploy_canary` entry); None if never
    (a canary alias set outside crispflow)."""
    deploys = [e["at"] for e in ledger.entries(model)
               if e["action"] == "deploy_canary" and e["to_version"] == canary and e["state"] == CONFIRMED]
    return datetime.fromisoformat(deploys[-1]) if deploys else None


def latest_canary_analysis(root: Any, ledger: Ledger, model: str, canary: str) -> dict[str, Any] | None:
    """The newest stored canary-analysis report of `canary` for its current deployment (reports are stored per
    analysing run by `crispflow.release.canary_analysis.store_report`); None when it was not judged since.

    The deployment is `canary_deployed_at`; reports of an earlier deployment of the same version do not count. Newest:
    the latest analysis interval end. Reads one small JSON file per analysing run of this canary version."""
    from crispflow.predictions.store import canary_report_path, display_path

    folder = canary_report_path(root, model, canary, "-").parent
    if not folder.exists():
        return None
    since = canary_deployed_at(ledger, model, canary)
    found: list[tuple[datetime, dict[str, Any]]] = []
    for path in folder.iterdir():
        if not path.name.endswith(".json") or path.name.startswith("."):
            continue
        report = json.loads(path.read_bytes())
        interval = report.get("interval") or {}
        try:
            end = datetime.fromisoformat(interval["end"])
            deployed = datetime.fromisoformat(interval["deployed_at"])
        except (KeyError, TypeError, ValueError):
            continue
        if since is None or deployed >= since:
            found.append((end, {**report, "path": display_path(path)}))
    return max(found, key=lambda item: item[0])[1] if found else None


def promote_canary_now(mlf: MlflowClient, ledger: Ledger, model: str, *, expected_canary: str,
                       expected_champion: str, reason: str, move_key: str, person: str,
                       reports_root: Any) -> dict[str, Any]:
    """A person's decision to promote the live canary before the canary analysis has (canary → champion, the old
    champion kept as `previous`: the `promote_canary` transition), once per `move_key`.

    Refused with PromotionConflict (naming what was shown and what is now) when the canary or the champion is not
    the version the person saw, and with PromotionRefused when the canary's latest stored canary analysis (under
    `reports_root`, the prediction store; see `latest_canary_analysis`) decided to roll it back. The evidence
    records that the promotion was manual, by whom, the versions shown and the latest analysis (or none).
    Returns the ledger entry's summary."""
    from crispflow.release.canary import ROLLBACK

    transition = None
    if ledger.find(move_key) is None:
        state = current_state(mlf, ledger, model)
        _check_shown(model, state, {CANARY: str(expected_canary), CHAMPION: str(expected_champion)}, "promoted")
        canary = str(expected_canary)
        latest = latest_canary_analysis(reports_root, ledger, model, canary)
        if latest is not None and latest.get("decision") == ROLLBACK:
            raise PromotionRefused(
                f"{model}: the latest canary analysis of v{canary} decided to roll it back "
                f"({'; '.join(latest.get('reasons') or []) or 'no reason recorded'}; report {latest['path']}): "
                "not promoted; roll it back, or deploy a new version")
        evidence = {"manual": True, "decided_by": person,
                    "shown": {CHAMPION: str(expected_champion), CANARY: canary},
                    "latest_analysis": None if latest is None else {
                        "decision": latest.get("decision"), "reasons": latest.get("reasons"),
                        "report": latest["path"], "interval": latest.get("interval")}}
        transition = promote_canary(state, canary, reason, evidence)
    return entry_summary(apply(mlf, ledger, model, transition, move_key=move_key, actor=move_key, person=person))
