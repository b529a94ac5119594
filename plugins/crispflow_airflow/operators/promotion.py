"""Operators that move serving aliases: deploy a canary (or shadow, or blue-green), roll back (the canary
analysis is in `canary.py`). Every move goes through the promotion ledger (check-and-set, idempotent per task) and
runs in the `crispflow_promotions` pool of one slot, so promotions are serialised twice over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow.release.promotion import POOL
from crispflow_airflow.context import acting_person, task_key
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.jobs import release_clients

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

        from crispflow.release.promotion import deploy_version

        mlf, ledger, model = release_clients(self.pipeline)
        version = str(self.version)
        with as_airflow_errors():
            result = deploy_version(mlf, ledger, model, version, strategy=str(self.strategy), share=float(self.share),
                                    reason=str(self.reason), move_key=task_key(context),
                                    person=acting_person(context))
        if "skipped" in result:
            raise AirflowSkipException(result["skipped"])
        self.log.info("%s: %s v%s (%s), ledger entry %s", model, result["action"], version, self.strategy,
                      result["seq"])
        return result


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
        from crispflow.release.promotion import rollback_champion

        mlf, ledger, model = release_clients(self.pipeline)
        with as_airflow_errors():
            result = rollback_champion(mlf, ledger, model, str(self.reason), move_key=task_key(context),
                                       person=acting_person(context))
        self.log.info("%s: champion v%s → v%s (%s), for %s", model, result["moves"]["champion"][0],
                      result["to_version"], self.reason, result["person"])
        return result
