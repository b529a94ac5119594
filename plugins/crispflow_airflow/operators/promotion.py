"""Operators that move serving aliases: deploy a canary (or shadow, or blue-green), analyse and settle a canary,
roll back. Every move goes through the promotion ledger (check-and-set, idempotent per task) and runs in the
`crispflow_promotions` pool of one slot, so promotions are serialised twice over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow.release.promotion import POOL
from crispflow_airflow.context import run_window, task_key
from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context



def _clients(pipeline: str) -> tuple[Any, Any, str]:
    from crispflow.model.registry import model_name
    from crispflow.release.promotion import Ledger
    from crispflow.settings import Settings
    from crispflow_airflow.hooks.mlflow import MlflowHook

    return MlflowHook().get_client(), Ledger(Settings.from_env().ledger_url), model_name(pipeline)


class DeployCanaryOperator(BaseOperator):
    """Put a blessed model version live beside the champion.

    `canary`: the `canary` alias at `share` of entities (sticky by entity key); `shadow`: the `shadow` alias scoring
    a mirrored `share` of requests, never answering; `blue_green`: `champion` switched at once, the old one kept as
    `previous`. A version that is not blessed, or already the champion, is skipped with the reason (not an error).

    :param pipeline: pipeline spec name (templated)
    :param version: the model version to deploy (templated)
    :param share: traffic share in (0, 1] (templated)
    :param strategy: canary, shadow or blue_green (templated)
    :param reason: recorded in the ledger (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "version", "share", "strategy", "reason")
    ui_color = "#e8f5e9"

    def __init__(self, *, pipeline: str, version: Any, share: Any = 0.2, strategy: str = "canary",
                 reason: str = "blessed challenger", pool: str = POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.version = version
        self.share = share
        self.strategy = strategy
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from crispflow.release import promotion

        mlf, ledger, model = _clients(self.pipeline)
        version = str(self.version)
        with as_airflow_errors():
            if ledger.find(task_key(context)) is None:  # first try: is there anything to do?
                if self.strategy == "none":
                    raise AirflowSkipException("deployment strategy 'none': the version stays `challenger`")
                state = promotion.current_state(mlf, ledger, model)
                if not promotion.is_blessed(mlf, model, version):
                    raise AirflowSkipException(f"{model} v{version} is not blessed: not deployed")
                if state.get(promotion.CHAMPION) in (None, version):
                    raise AirflowSkipException(f"{model} v{version} is the champion already (cold start): "
                                               "no canary needed")
                transition = promotion.deploy(state, version, strategy=str(self.strategy), share=float(self.share),
                                              reason=str(self.reason), evidence={"verdict_blessed": True})
            else:
                transition = None
            entry = promotion.apply(mlf, ledger, model, transition, move_key=task_key(context),
                                    actor=task_key(context))
        self.log.info("%s: %s v%s (%s), ledger entry %s", model, entry["action"], version, self.strategy, entry["seq"])
        return _summary(entry)


def _summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("seq", "action", "from_version", "to_version", "moves", "reason", "replayed")}


class CanaryAnalysisOperator(BaseOperator):
    """Judge the live canary against the champion from the prediction log, store the report, and act on it:
    promote (canary → champion, old champion → `previous`), roll the canary back, or let it continue.

    Guardrails use the run's data interval (or the `window` before the run for manual runs); labelled evidence
    uses everything since the canary was deployed (see `crispflow.release.canary`). No canary: nothing to do.

    :param pipeline: pipeline spec name (templated)
    :param policy: overrides of `crispflow.release.canary.CanaryPolicy` fields (templated)
    :param window: the analysis window of runs without a data interval
    """

    template_fields: Sequence[str] = ("pipeline", "policy")
    ui_color = "#fff8e1"

    def __init__(self, *, pipeline: str, policy: Mapping[str, Any] | None = None,
                 window: timedelta = timedelta(minutes=10), pool: str = POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.policy = policy
        self.window = window

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.model.registry import load_verified
        from crispflow.release import promotion
        from crispflow.release.canary import PROMOTE, ROLLBACK, CanaryPolicy, analyse, paired_from_log

        mlf, ledger, model = _clients(self.pipeline)
        key = task_key(context)
        with as_airflow_errors():
            recorded = ledger.find(key)
            if recorded is not None:  # a retry after the move was recorded: finish it, never move twice
                return _summary(promotion.apply(mlf, ledger, model, None, move_key=key, actor=key))
            state = promotion.current_state(mlf, ledger, model)
            champion, canary = state.get(promotion.CHAMPION), state.get(promotion.CANARY)
            if canary is None or champion is None:
                self.log.info("%s: no canary live (champion %s): nothing to analyse", model, champion)
                return {"decision": "none", "reasons": ["no canary deployed"]}
            start, end = run_window(context, self.window)
            deployed = _deployed_at(ledger, model, canary)
            since = _read(model, min(deployed, start), end)
            live = since[since["ts"] >= deployed]
            models = {v: load_verified(mlf, model, v) for v in (champion, canary)}  # hash-checked
            paired = paired_from_log(live, lambda v, x: _score(models[v], x), champion=champion, canary=canary)
            report = analyse(since[since["ts"] >= start], live, champion=champion, canary=canary,
                             policy=CanaryPolicy(**dict(self.policy or {})), paired=paired)
            report["interval"] = {"start": start.isoformat(), "end": end.isoformat(),
                                  "deployed_at": deployed.isoformat()}
            where = _store_report(mlf, model, canary, context, report)
            self.log.info("%s canary v%s vs champion v%s: %s (%s)", model, canary, champion, report["decision"],
                          "; ".join(report["reasons"]))
            evidence = {"report": where, "guardrails": report["guardrails"], "labelled": report["labelled"]}
            reason = "; ".join(report["reasons"])
            if report["decision"] == PROMOTE:
                entry = promotion.apply(mlf, ledger, model, promotion.promote_canary(state, canary, reason, evidence),
                                        move_key=key, actor=key)
            elif report["decision"] == ROLLBACK:
                entry = promotion.apply(mlf, ledger, model, promotion.abort_canary(state, canary, reason, evidence),
                                        move_key=key, actor=key)
            else:
                entry = None
        return {"decision": report["decision"], "reasons": report["reasons"], "report": where,
                "champion": champion, "canary": canary, "ledger": _summary(entry) if entry else None}


def _score(model: Any, features: Any) -> Any:
    """Positive-class scores of logged features (only the columns the model was fitted on, e.g. no entity key)."""
    columns = getattr(model, "feature_names_in_", None)
    return model.predict_proba(features[list(columns)] if columns is not None else features)[:, 1]


def _deployed_at(ledger: Any, model: str, canary: str) -> Any:
    from datetime import UTC, datetime

    deploys = [e for e in ledger.entries(model) if e["action"] == "deploy_canary" and e["to_version"] == canary]
    if not deploys:  # a canary alias set outside crispflow: judge what the log holds for it
        return datetime(1970, 1, 1, tzinfo=UTC)
    return datetime.fromisoformat(deploys[-1]["at"])


def _read(model: str, start: Any, end: Any) -> Any:
    from crispflow.predictions.reader import read_predictions
    from crispflow_airflow.hooks.predictions import PredictionStoreHook

    return read_predictions(PredictionStoreHook().get_root(), model, start, end)


def _store_report(mlf: Any, model: str, canary: str, context: Context, report: dict[str, Any]) -> str:
    """The report as JSON next to the prediction log, and as an artifact of the canary version's run."""
    import json

    from crispflow.lake import write_atomic
    from crispflow.predictions.store import canary_report_path, display_path
    from crispflow_airflow.hooks.predictions import PredictionStoreHook

    run = context["ti"].run_id
    path = canary_report_path(PredictionStoreHook().get_root(), model, canary, run)
    body = json.dumps(report, indent=2, default=str)
    write_atomic(path, body.encode())
    mv = mlf.get_model_version(model, canary)
    mlf.log_text(mv.run_id, body, f"canary/{path.name}")
    return display_path(path)


class RollbackOperator(BaseOperator):
    """Re-point `champion` to `previous` (one click in the UI or one REST call); recorded in the ledger.

    :param pipeline: pipeline spec name (templated)
    :param reason: why (recorded) (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "reason")
    ui_color = "#ffebee"

    def __init__(self, *, pipeline: str, reason: str, pool: str = POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.release import promotion

        mlf, ledger, model = _clients(self.pipeline)
        key = task_key(context)
        with as_airflow_errors():
            transition = None
            if ledger.find(key) is None:
                state = promotion.current_state(mlf, ledger, model)
                transition = promotion.rollback(state, str(self.reason))
            entry = promotion.apply(mlf, ledger, model, transition, move_key=key, actor=key)
            rolled_back = entry["moves"]["champion"][0]
            if rolled_back:
                mlf.set_model_version_tag(model, str(rolled_back), "crispflow.rolled_back", key)
        self.log.info("%s: champion v%s → v%s (%s)", model, rolled_back, entry["to_version"], self.reason)
        return _summary(entry)
