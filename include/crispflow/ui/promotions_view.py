"""The Promotions page: the promotion ledger of one model (newest first), the aliases the registry serves now,
where ledger and registry disagree, and what the page's buttons may offer (roll back to `previous`, promote or
judge the live canary), with the versions the page showed so a stale page cannot act on something else.

Read-only: the buttons trigger DAGs (`rollback`, `promote_canary`, `canary_analysis`) whose tasks move aliases
through the ledger's check-and-set (`crispflow.release.promotion`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crispflow.lake import json_safe
from crispflow.model import registry
from crispflow.release import promotion
from crispflow.ui.models_view import alias_map, registered_model

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.release.promotion import Ledger

ENTRY_KEYS = ("seq", "at", "action", "from_version", "to_version", "moves", "reason", "evidence", "person", "state",
              "actor")


def promotions_page(mlf: MlflowClient, ledger: Ledger, model: str, *, limit: int = 500) -> dict[str, Any]:
    """The ledger and the aliases of `model` (NotFound for an invalid or unknown name).

    Keys: `model`; `aliases` (the registry now: champion, canary, shadow, challenger, previous → version or None);
    `ledger_aliases` (the confirmed ledger's view, the one rollback and promotion decide on); `champion`,
    `previous` (as the ledger and registry together hold them: `promotion.current_state`); `entries` (newest
    first, at most `limit`: seq, time, action, moves {alias: [before, after]}, from/to version, reason, evidence,
    person, state, actor); `total_entries`; `divergences` (`promotion.verify`, as sentences) and `pending` (a
    move recorded but not yet confirmed); `can_rollback` (a previous champion, nothing pending); `canary`
    ({version, share, deployed_at} or None) and `can_promote_canary`.
    """
    rm = registered_model(mlf, model)
    entries = ledger.entries(model)
    recorded = ledger.state(model)[1]
    served = alias_map(rm)
    current = {**{a: served.get(a) for a in promotion.SERVING_ALIASES}, **recorded}
    divergences = promotion.verify(mlf, ledger, model)
    pending = any(d.kind == "pending" for d in divergences)
    canary = current.get(promotion.CANARY)
    tags = rm.tags or {}
    return json_safe({
        "model": model,
        "aliases": served,
        "ledger_aliases": {a: recorded.get(a) for a in promotion.SERVING_ALIASES},
        "champion": current.get(promotion.CHAMPION),
        "previous": current.get(promotion.PREVIOUS),
        "entries": [entry_view(e) for e in reversed(entries[-limit:] if limit > 0 else [])],
        "total_entries": len(entries),
        "divergences": [str(d) for d in divergences],
        "pending": pending,
        "can_rollback": bool(current.get(promotion.PREVIOUS)) and bool(current.get(promotion.CHAMPION))
        and not pending,
        "canary": None if canary is None else {
            "version": canary, "share": _share(tags.get(registry.CANARY_SHARE_TAG)),
            "deployed_at": _deployed_at(entries, canary)},
        "can_promote_canary": canary is not None and bool(current.get(promotion.CHAMPION)) and not pending,
        "shadow": current.get(promotion.SHADOW),
    })


def entry_view(entry: dict[str, Any]) -> dict[str, Any]:
    """One ledger entry for the page (`at` shown as `time`)."""
    view = {k: entry.get(k) for k in ENTRY_KEYS}
    view["time"] = view.pop("at")
    return view


def _deployed_at(entries: list[dict[str, Any]], canary: str) -> str | None:
    deploys = [e for e in entries if e["action"] == "deploy_canary" and e["to_version"] == canary
               and e["state"] == promotion.CONFIRMED]
    return deploys[-1]["at"] if deploys else None


def _share(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
