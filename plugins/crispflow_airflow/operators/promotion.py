"""Operators that move serving aliases: deploy a canary (or shadow, or blue-green), roll back, promote the canary
by a person's decision (the canary analysis is in `canary.py`). Every move goes through the promotion ledger
(check-and-set, idempotent per task) and runs in the `crispflow_promotions` pool of one slot, so promotions are
serialised twice over. Each returns the ledger entry's summary with the `model`; the extra links open the entry on
the Promotions page (and the deployed version in MLflow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow.release.promotion import POOL
from crispflow_airflow.context import acting_person, task_key
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.jobs import release_clients
from crispflow_airflow.links import LedgerEntryLink, MlflowModelVersionLink, MlflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context


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
    operator_extra_links = (LedgerEntryLink(), MlflowModelVersionLink(), MlflowRunLink())

    def __init__(self, *, pipeline: str, version: Any, share: Any = 0.2, strategy: str = "canary",
                 reason: str = "blessed challenger", pool: str = POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.version = version
        self.share = share
        self.strategy = strategy
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.release.promotion import deploy_version
        from crispflow_airflow.links import mlflow_ref
        from crispflow_airflow.run_notes import skip

        mlf, ledger, model = release_clients(self.pipeline)
        version = str(self.version)
        with as_airflow_errors():
            result = deploy_version(mlf, ledger, model, version, strategy=str(self.strategy), share=float(self.share),
                                    reason=str(self.reason), move_key=task_key(context),
                                    person=acting_person(context))
        if "skipped" in result:
            skip(context, result["skipped"])
        self.log.info("%s: %s v%s (%s), ledger entry %s", model, result["action"], version, self.strategy,
                      result["seq"])
        return {**result, "model": model, "mlflow": mlflow_ref(mlf, model, version)}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: each version moved to → its alias (`crispflow_airflow.lineage.alias_moves`)."""
        return _alias_lineage(task_instance)


class RollbackOperator(BaseOperator):
    """Re-point `champion` to `previous` (one click in the UI or one REST call); recorded in the ledger.

    :param pipeline: pipeline spec name (templated)
    :param reason: why (recorded) (templated)
    :param expected_champion: the champion the person saw (the page's button sends it); if another version is
        champion now, the rollback is refused (PromotionAborted, not retried) naming both. Empty: not checked
        (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "reason", "expected_champion")
    ui_color = "#ffebee"
    operator_extra_links = (LedgerEntryLink(),)

    def __init__(self, *, pipeline: str, reason: str, expected_champion: Any = None, pool: str = POOL,
                 **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.reason = reason
        self.expected_champion = expected_champion

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.release.promotion import rollback_champion

        mlf, ledger, model = release_clients(self.pipeline)
        with as_airflow_errors():
            result = rollback_champion(mlf, ledger, model, str(self.reason), move_key=task_key(context),
                                       person=acting_person(context),
                                       expected_champion=_version_or_none(self.expected_champion))
        self.log.info("%s: champion v%s → v%s (%s), for %s", model, result["moves"]["champion"][0],
                      result["to_version"], self.reason, result["person"])
        return {**result, "model": model}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: each version moved to → its alias (`crispflow_airflow.lineage.alias_moves`)."""
        return _alias_lineage(task_instance)


class PromoteCanaryOperator(BaseOperator):
    """Promote the live canary now, by a person's decision (canary → champion, the old champion kept as
    `previous`), instead of waiting for the canary analysis; recorded in the ledger as manual, for the person who
    triggered the run.

    Refused (PromotionAborted, not retried, nothing moved) when the canary or the champion is not the version the
    person saw, or when the canary's latest canary analysis decided to roll it back
    (`crispflow.release.promotion.promote_canary_now`).

    :param pipeline: pipeline spec name (templated)
    :param expected_canary: the canary version the person saw (templated)
    :param expected_champion: the champion version the person saw (templated)
    :param reason: why (recorded) (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "expected_canary", "expected_champion", "reason")
    ui_color = "#e8f5e9"
    operator_extra_links = (LedgerEntryLink(),)

    def __init__(self, *, pipeline: str, expected_canary: Any, expected_champion: Any, reason: str,
                 pool: str = POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.pipeline = pipeline
        self.expected_canary = expected_canary
        self.expected_champion = expected_champion
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.release.promotion import promote_canary_now
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        mlf, ledger, model = release_clients(self.pipeline)
        with as_airflow_errors():
            result = promote_canary_now(mlf, ledger, model, expected_canary=str(self.expected_canary),
                                        expected_champion=str(self.expected_champion), reason=str(self.reason),
                                        move_key=task_key(context), person=acting_person(context),
                                        reports_root=PredictionStoreHook().get_root())
        self.log.info("%s: canary v%s promoted to champion (was v%s), for %s", model, result["to_version"],
                      result["from_version"], result["person"])
        return {**result, "model": model}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: each version moved to → its alias (`crispflow_airflow.lineage.alias_moves`)."""
        return _alias_lineage(task_instance)


def _alias_lineage(task_instance: Any) -> Any:
    """The alias moves of a ledger entry summary (the task's result) as OpenLineage datasets."""
    from crispflow_airflow import lineage

    return lineage.facets(task_instance, lambda result, _, uri: lineage.alias_moves(
        str(result["model"]), result.get("moves"), uri))


def _version_or_none(value: Any) -> str | None:
    """A version param as text; None, "" and "None" (an unset templated param) mean "not given"."""
    text = "" if value is None else str(value).strip()
    return None if text in ("", "None") else text
