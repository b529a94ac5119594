"""Alias moves through a promotion ledger: every move of `champion`, `canary`, `shadow` and `previous` is recorded
append-only (who, when, from → to, why, evidence) before the registry is touched.

MLflow has no compare-and-set on aliases, so the ledger provides one: a transition states which versions it expects
the aliases to hold, and is appended as entry `seq = last + 1` in one transaction; a concurrent promoter either
collides on that primary key or finds the state changed, and aborts with `PromotionConflict`. Each transition has a
`move_key` (the Airflow task that made it): a retried task finds its entry and only completes the registry moves,
so an alias is never moved twice. The ledger is a SQL table (SQLite locally, PostgreSQL in production) and every
entry is also logged to MLflow (an artifact of the target version's run and a tag on the version).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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
)
from crispflow.pools import PROMOTIONS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from sqlalchemy.engine import Engine

POOL = PROMOTIONS  # the Airflow pool (one slot) every alias move runs in; `crispflow up` creates it
SERVING_ALIASES = (CHAMPION, CANARY, SHADOW, PREVIOUS)
ACTIONS = ("cold_start", "deploy_canary", "deploy_shadow", "blue_green", "promote", "abort_canary", "rollback")


class PromotionConflict(CrispflowError):
    """Another promotion moved the aliases first (or concurrently): this one aborts without moving anything."""


class PromotionRefused(CrispflowError):
    """The transition is not allowed (version not blessed or incomplete, no previous champion, ...)."""


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
    )


class Ledger:
    """The append-only promotion ledger on a SQLAlchemy URL (`Settings.ledger_url`)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import MetaData, create_engine
        from sqlalchemy.exc import OperationalError, ProgrammingError

        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        self.metadata = MetaData()
        self.table = _table(self.metadata)
        try:
            self.metadata.create_all(self.engine)
        except (OperationalError, ProgrammingError):  # created concurrently by another process
            self.metadata.create_all(self.engine)

    def entries(self, model: str, conn: Any = None) -> list[dict[str, Any]]:
        """Every entry of `model`, oldest first, JSON columns decoded."""
        from sqlalchemy import select

        if conn is None:
            with self.engine.connect() as own:
                return self.entries(model, own)
        rows = conn.execute(select(self.table).where(self.table.c.model == model).order_by(self.table.c.seq))
        return [_decode(row._mapping) for row in rows]

    def find(self, move_key: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.move_key == move_key)).first()
        return _decode(row._mapping) if row else None

    def state(self, model: str, conn: Any = None) -> tuple[int, dict[str, str | None]]:
        """(last seq, alias → version) as the ledger recorded it; aliases it never moved are absent."""
        entries = self.entries(model, conn)
        aliases: dict[str, str | None] = {}
        for entry in entries:
            aliases.update({alias: after for alias, (_, after) in entry["moves"].items()})
        return (entries[-1]["seq"] if entries else 0), aliases

    def append(self, model: str, move_key: str, transition: Transition, before: Mapping[str, str | None],
               actor: str) -> dict[str, Any]:
        """Check-and-set: append the transition if the aliases still hold what it expects; else PromotionConflict."""
        from sqlalchemy.exc import IntegrityError

        t = self.table
        last = 0
        try:
            with self.engine.begin() as conn:
                last, recorded = self.state(model, conn)
                state = {**before, **recorded}
                stale = {a: (v, state.get(a)) for a, v in transition.expect.items() if state.get(a) != v}
                if stale:
                    raise PromotionConflict(
                        f"{model}: aliases moved since this promotion was decided "
                        + ", ".join(f"{a} expected {_v(v)}, is {_v(now)}" for a, (v, now) in stale.items())
                        + f" (ledger entry {last}); aborting without moving anything")
                primary = next(iter(transition.moves))
                entry = {
                    "model": model, "seq": last + 1, "move_key": move_key, "at": datetime.now(UTC),
                    "action": transition.action, "from_version": state.get(primary),
                    "to_version": transition.moves[primary],
                    "moves": json.dumps({a: [state.get(a), v] for a, v in transition.moves.items()}),
                    "tags": json.dumps(dict(transition.tags)), "reason": transition.reason,
                    "evidence": json.dumps(json_safe(dict(transition.evidence)), default=str), "actor": actor,
                }
                conn.execute(t.insert().values(**entry))
        except IntegrityError as exc:
            if self.find(move_key):  # our own earlier try recorded it (a retry racing itself)
                return self.find(move_key)  # type: ignore[return-value]
            raise PromotionConflict(f"{model}: another promotion was recorded concurrently as ledger entry "
                                    f"{last + 1}; aborting without moving anything") from exc
        return _decode(entry)


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
    return out


def registry_state(mlf: MlflowClient, model: str) -> dict[str, str | None]:
    """The serving aliases as the registry holds them now."""
    state: dict[str, str | None] = {}
    for alias in SERVING_ALIASES:
        mv = registry.alias_version(mlf, model, alias)
        state[alias] = str(mv.version) if mv is not None else None
    return state


def current_state(mlf: MlflowClient, ledger: Ledger, model: str) -> dict[str, str | None]:
    """The aliases as the ledger recorded them (the registry for aliases the ledger never moved)."""
    return {**registry_state(mlf, model), **ledger.state(model)[1]}


def apply(mlf: MlflowClient, ledger: Ledger, model: str, transition: Transition | None, *, move_key: str,
          actor: str) -> dict[str, Any]:
    """Record the transition in the ledger (check-and-set), then move the aliases and set the tags in MLflow.

    Idempotent per `move_key`: a retry finds its entry and re-applies only what the registry is missing, and
    only while no later entry exists (`transition` may then be None). Versions must be complete (artifact hash
    recorded) before anything is recorded.
    """
    existing = ledger.find(move_key)
    if existing is None:
        if transition is None:
            raise PromotionRefused(f"no ledger entry for {move_key!r} and no transition to record")
        for alias, version in transition.moves.items():
            if version is not None:
                _require_complete(mlf, model, version, alias)
        entry = ledger.append(model, move_key, transition, registry_state(mlf, model), actor)
        replayed = False
    else:
        entry, replayed = existing, True
        if ledger.state(model)[0] != entry["seq"]:
            return {**entry, "replayed": True, "applied": False}  # superseded by a later promotion: leave it
    _apply_registry(mlf, model, entry)
    _record_in_mlflow(mlf, model, entry)
    return {**entry, "replayed": replayed, "applied": True}


def _require_complete(mlf: MlflowClient, model: str, version: str, alias: str) -> None:
    mv = mlf.get_model_version(model, version)
    if mv.status != "READY" or registry.SHA_TAG not in mv.tags:
        raise PromotionRefused(f"{model} v{version} is not complete (status {mv.status}, no artifact hash): "
                               f"alias {alias!r} not moved")


def _apply_registry(mlf: MlflowClient, model: str, entry: Mapping[str, Any]) -> None:
    """Tags first (a canary share before the canary alias), then `previous` before `champion`, deletions last."""
    from mlflow.exceptions import MlflowException

    for key, value in entry["tags"].items():
        mlf.set_registered_model_tag(model, key, str(value))
    order = {PREVIOUS: 0, SHADOW: 1, CANARY: 2, CHAMPION: 3}
    moves = sorted(entry["moves"].items(), key=lambda kv: (kv[1][1] is None, order[kv[0]]))
    for alias, (_, after) in moves:
        if after is None:
            with contextlib.suppress(MlflowException):  # already absent
                mlf.delete_registered_model_alias(model, alias)
        else:
            registry.set_alias(mlf, model, alias, str(after))


def _record_in_mlflow(mlf: MlflowClient, model: str, entry: Mapping[str, Any]) -> None:
    """The entry as JSON in the run of the version it concerns, and a tag on that version."""
    version = entry["to_version"] or entry["from_version"]
    if version is None:
        return
    mv = mlf.get_model_version(model, str(version))
    mlf.log_text(mv.run_id, json.dumps(json_safe(dict(entry)), indent=2, default=str),
                 f"promotions/{entry['seq']:05d}-{entry['action']}.json")
    mlf.set_model_version_tag(model, str(version), f"crispflow.ledger.{entry['seq']}", entry["action"])


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
    """A ledger entry as a task reports it (small, JSON-safe): seq, action, versions, moves, reason, replayed."""
    return {k: entry[k] for k in ("seq", "action", "from_version", "to_version", "moves", "reason", "replayed")}


def deploy_version(mlf: MlflowClient, ledger: Ledger, model: str, version: str, *, strategy: str, share: float,
                   reason: str, move_key: str) -> dict[str, Any]:
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
    return entry_summary(apply(mlf, ledger, model, transition, move_key=move_key, actor=move_key))


def promote_first_blessed(mlf: MlflowClient, ledger: Ledger, model: str, version: str, *,
                          run_key: str) -> dict[str, Any]:
    """The first blessed model of a pipeline becomes `champion` (cold start); later ones stay `challenger` for
    the canary. Once per training run (`run_key`): a retry only completes the recorded move."""
    champion = registry.alias_version(mlf, model, CHAMPION)
    if not is_blessed(mlf, model, version):
        return {"action": "none", "reason": "not blessed", "version": version}
    if champion is not None and str(champion.version) != version:
        return {"action": "none", "reason": f"champion v{champion.version} exists: canary decides", "version": version}
    key = f"{run_key}/cold_start/v{version}"
    transition = None if ledger.find(key) else cold_start(current_state(mlf, ledger, model), version,
                                                          "first blessed model")
    apply(mlf, ledger, model, transition, move_key=key, actor=run_key)
    return {"action": "champion", "version": version}


def rollback_champion(mlf: MlflowClient, ledger: Ledger, model: str, reason: str, *,
                      move_key: str) -> dict[str, Any]:
    """`champion` back to `previous` (see `rollback`), once per `move_key`; the rolled-back version is tagged
    `crispflow.rolled_back` with the move key. Returns the ledger entry's summary."""
    transition = None
    if ledger.find(move_key) is None:
        transition = rollback(current_state(mlf, ledger, model), reason)
    entry = apply(mlf, ledger, model, transition, move_key=move_key, actor=move_key)
    rolled_back = entry["moves"][CHAMPION][0]
    if rolled_back:
        mlf.set_model_version_tag(model, str(rolled_back), ROLLED_BACK_TAG, move_key)
    return entry_summary(entry)
