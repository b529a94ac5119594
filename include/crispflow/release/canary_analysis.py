"""Settle a live canary: read its traffic from the prediction store, re-score the labelled requests with both
hash-checked models, judge it (`crispflow.release.canary.analyse`), store the report, and act on the decision:
promote the canary, roll it back (both through the promotion ledger), or let it run on.

The task comes from the versions' tags (`crispflow.task`, `crispflow.classes`; untagged versions are binary):
both models' outputs are `crispflow.model.tasks.model_output` of the logged features, and the paired loss is the
task's (`crispflow.release.canary`). A canary of another task (or other classes) than its champion cannot be
compared: GateMisconfigured, nothing moves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.release import promotion

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from crispflow.model.registry import VersionTask
    from crispflow.release.canary import CanaryPolicy
    from crispflow.release.promotion import Ledger

log = logging.getLogger(__name__)
NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def settle_canary(mlf: MlflowClient, ledger: Ledger, model: str, root: Any, *, start: datetime, end: datetime,
                  policy: CanaryPolicy, move_key: str, run_key: str, person: str,
                  trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Judge the canary of `model` against its champion and act on it, once per `move_key`.

    First the ledger's pending tail is reconciled and the registry checked for aliases moved outside crispflow:
    those are recorded as an `outside_move` entry and OutsideMove is raised (the run fails once, without retry,
    naming the aliases and versions; the next run judges the canary against what is actually served).
    Guardrails use [start, end); labelled evidence uses everything since the canary was deployed. The report
    (JSON) goes to `canary_report_path(root, model, canary, run_key)` and into the canary version's run.
    Returns `{"decision", "reasons", "report", "champion", "canary", "ledger"}` (`ledger`: the summary of the
    move, or None); `{"decision": "none", ...}` when no canary is live; and, for a retry whose move was already
    recorded, that move's ledger summary (the registry moves completed, nothing decided again).

    :param root: the prediction store's root (a path-like: local path, UPath or ObjectStoragePath)
    :param policy: the resolved `CanaryPolicy` (recorded with its sha256 in the move's evidence)
    :param person: who the move is made for (recorded in the ledger entry)
    :param trusted: module prefixes the models' files may hold classes of besides sklearn's (the spec's
        `training.allowed_estimators`)
    """
    from crispflow.model.registry import load_files, task_of, verified_copy
    from crispflow.predictions.reader import read_predictions
    from crispflow.release.canary import PROMOTE, ROLLBACK, analyse, paired_from_log

    if ledger.find(move_key) is not None:  # a retry after the move was recorded: finish it, never move twice
        return promotion.entry_summary(promotion.apply(mlf, ledger, model, None, move_key=move_key, actor=move_key,
                                                       person=person))
    promotion.reconcile(mlf, ledger, model)  # a pending move completed first (or the registry is unreachable)
    promotion.check_outside_moves(mlf, ledger, model, actor=move_key)  # recorded, then OutsideMove: fail once
    state = promotion.current_state(mlf, ledger, model)
    champion, canary = state.get(promotion.CHAMPION), state.get(promotion.CANARY)
    if canary is None or champion is None:
        log.info("%s: no canary live (champion %s): nothing to analyse", model, champion)
        return {"decision": "none", "reasons": ["no canary deployed"]}
    deployed = deployed_at(ledger, model, canary)
    since = read_predictions(root, model, min(deployed, start), end)
    live = since[since["ts"] >= deployed]
    versions = {v: mlf.get_model_version(model, v) for v in (champion, canary)}
    task = same_task(model, {v: task_of(mv.tags or {}) for v, mv in versions.items()})
    models = {v: load_files(verified_copy(mv, trusted=trusted), trusted=trusted)  # hash-checked
              for v, mv in versions.items()}
    paired = paired_from_log(live, lambda v, x: _score(models[v], x, task), champion=champion, canary=canary,
                             task=task.task)
    report = analyse(since[since["ts"] >= start], live, champion=champion, canary=canary,
                     policy=policy, paired=paired, task=task.task)
    report["interval"] = {"start": start.isoformat(), "end": end.isoformat(), "deployed_at": deployed.isoformat()}
    where = store_report(mlf, root, model, canary, run_key, report)
    reason = "; ".join(report["reasons"])
    log.info("%s canary v%s vs champion v%s: %s (%s)", model, canary, champion, report["decision"], reason)
    evidence = {"report": where, "guardrails": report["guardrails"], "labelled": report["labelled"],
                **policy_evidence(policy)}
    move = {PROMOTE: promotion.promote_canary, ROLLBACK: promotion.abort_canary}.get(report["decision"])
    entry = None
    if move is not None:
        entry = promotion.apply(mlf, ledger, model, move(state, canary, reason, evidence), move_key=move_key,
                                actor=move_key, person=person)
    return {"decision": report["decision"], "reasons": report["reasons"], "report": where,
            "champion": champion, "canary": canary, "ledger": promotion.entry_summary(entry) if entry else None}


def policy_evidence(policy: CanaryPolicy) -> dict[str, Any]:
    """The policy a decision was made under, and its sha256 (`crispflow.policies.digest`: sorted compact JSON),
    for the ledger."""
    import dataclasses

    from crispflow.policies import digest

    return {"policy": dataclasses.asdict(policy), "policy_sha256": digest(policy)}


def deployed_at(ledger: Ledger, model: str, canary: str) -> datetime:
    """When `canary` was last deployed as the canary, per the ledger; the epoch for a canary alias set outside
    crispflow (then the analysis judges whatever the log holds for it)."""
    return promotion.canary_deployed_at(ledger, model, canary) or NEVER


def store_report(mlf: MlflowClient, root: Any, model: str, canary: str, run_key: str, report: Mapping[str, Any]) -> str:
    """The report as JSON next to the prediction log, and as an artifact of the canary version's run; returns
    where it is (for messages: no credentials)."""
    from crispflow.lake import write_atomic
    from crispflow.predictions.store import canary_report_path, display_path

    path = canary_report_path(root, model, canary, run_key)
    body = json.dumps(report, indent=2, default=str)
    write_atomic(path, body.encode())
    mlf.log_text(mlf.get_model_version(model, canary).run_id, body, f"canary/{path.name}")
    return display_path(path)


def same_task(model: str, tasks: Mapping[str, VersionTask]) -> VersionTask:
    """The one task of the compared versions; GateMisconfigured naming them if they differ."""
    from crispflow.errors import GateMisconfigured

    found = set(tasks.values())
    if len(found) != 1:
        described = ", ".join(f"v{v}: {t.task}{' ' + str(list(t.class_labels)) if t.class_labels else ''}"
                              for v, t in tasks.items())
        raise GateMisconfigured(f"{model}: the canary and the champion predict different things ({described}): "
                                "their losses cannot be compared; roll the canary back by hand")
    return found.pop()


def _score(model: Any, features: pd.DataFrame, task: VersionTask) -> np.ndarray:
    """The model's output for logged features in the task's convention (only the columns the model was fitted
    on, e.g. no entity key)."""
    from crispflow.model.tasks import model_output

    columns = getattr(model, "feature_names_in_", None)
    return model_output(task, model, features[list(columns)] if columns is not None else features)
