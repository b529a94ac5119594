"""Deployment phase: promote the live canary now, by a person's decision (the Promotions page's *Promote canary
now* button, or one REST call), instead of waiting for the canary analysis.

The canary becomes `champion` and the old champion is kept as `previous`; the ledger entry records that the
promotion was manual, who decided (the user who triggered the run), why, the versions they saw and the latest
canary analysis. Refused — nothing moves, the run fails without retry — when the canary or the champion is not the
version the person saw (`expected_canary`, `expected_champion`: a stale page cannot promote something else), or
when the canary's latest canary analysis decided to roll it back. Serialised with every other promotion (pool of
one slot plus a check-and-set on the ledger).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param, reason_param, version_param
from crispflow_airflow.operators.promotion import PromoteCanaryOperator


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "deployment"],
    params={
        "pipeline": pipeline_param("Pipeline whose canary to promote"),
        "expected_canary": version_param("The canary version you saw"),
        "expected_champion": version_param("The champion version you saw"),
        "reason": reason_param(),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=5)),
    doc_md=__doc__,
)
def promote_canary() -> None:
    PromoteCanaryOperator(task_id="promote", pipeline="{{ params.pipeline }}",
                          expected_canary="{{ params.expected_canary }}",
                          expected_champion="{{ params.expected_champion }}", reason="{{ params.reason }}",
                          retries=1)


promote_canary()
