"""Deployment phase: put the previous champion back (one click in the UI, or one REST call).

`champion` is re-pointed to `previous`; the move is recorded in the promotion ledger with the reason and who
triggered it, and the rolled-back version is tagged. Serialised with every other promotion (pool of one slot plus
a check-and-set on the ledger).

`expected_champion` is the champion the person saw (the Promotions page's *Roll back* button sends it): if another
version is champion by the time the run starts, nothing moves and the run fails naming both (a stale page cannot
roll back something else). Empty: not checked (a REST call that means "whatever is champion now").
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param, reason_param, version_param
from crispflow_airflow.operators.promotion import RollbackOperator


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "deployment"],
    params={
        "pipeline": pipeline_param("Pipeline whose champion to roll back"),
        "reason": reason_param(),
        "expected_champion": version_param("The champion version you saw; refused if it is another now",
                                           required=False),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=5)),
    doc_md=__doc__,
)
def rollback() -> None:
    RollbackOperator(task_id="rollback", pipeline="{{ params.pipeline }}", reason="{{ params.reason }}",
                     expected_champion="{{ params.expected_champion or '' }}", retries=1)


rollback()
