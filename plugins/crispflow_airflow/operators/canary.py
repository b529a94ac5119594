"""CanaryAnalysisOperator: judge the live canary and promote it, roll it back, or let it run on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow.release.promotion import POOL
from crispflow_airflow.context import acting_person, run_window, task_key
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.jobs import release_clients
from crispflow_airflow.links import LedgerEntryLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class CanaryAnalysisOperator(BaseOperator):
    """Judge the live canary against the champion from the prediction log, store the report, and act on it:
    promote (canary → champion, old champion → `previous`), roll the canary back, or let it continue.

    Guardrails use the run's data interval (or the `window` before the run for manual runs); labelled evidence
    uses everything since the canary was deployed (see `crispflow.release.canary`). No canary: nothing to do.
    The work is `crispflow.release.canary_analysis.settle_canary`, with the pipeline spec's `canary:` policy
    tightened by the run's `policy` overrides (`crispflow.policies.CANARY`): a loosening value, an unknown field or
    a wrong type fails with InvalidRequest (not retried) before anything is read or moved. The move is attributed
    to the person the run acts for (`acting_person`).

    :param pipeline: pipeline spec name (templated)
    :param policy: a run's overrides of the spec's `canary:` policy, tighten-only (templated)
    :param window: the analysis window of runs without a data interval
    """

    template_fields: Sequence[str] = ("pipeline", "policy")
    ui_color = "#fff8e1"
    operator_extra_links = (LedgerEntryLink(),)

    def __init__(self, *, pipeline: str, policy: Mapping[str, Any] | str | None = None,
                 window: timedelta = timedelta(minutes=10), pool: str = POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.policy = policy
        self.window = window

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.release.canary import canary_policy
        from crispflow.release.canary_analysis import settle_canary
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        with as_airflow_errors():
            spec = load_spec(str(self.pipeline))
            policy = canary_policy(spec, self.policy)
        self.log.info("canary policy of %s (sha256 %s): %s", spec.name, policy.digest(), policy)
        mlf, ledger, model = release_clients(self.pipeline)
        start, end = run_window(context, self.window)
        trusted = tuple(spec.training.allowed_estimators) if spec.training else ()
        with as_airflow_errors():
            return settle_canary(mlf, ledger, model, PredictionStoreHook().get_root(), start=start, end=end,
                                 policy=policy, move_key=task_key(context), run_key=context["ti"].run_id,
                                 person=acting_person(context), trusted=trusted)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: a promotion or rollback moves aliases (version → alias); "continue" moves nothing
        (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage
        from crispflow_airflow.links import model_of

        return lineage.facets(task_instance, lambda result, _, uri: lineage.alias_moves(
            model_of(result, self), (result.get("ledger") or {}).get("moves"), uri))
