"""Deployment phase: put the previous champion back (one click in the UI, or one REST call).

`champion` is re-pointed to `previous`; the move is recorded in the promotion ledger with the reason and who
triggered it, and the rolled-back version is tagged. Serialised with every other promotion (pool of one slot plus
a check-and-set on the ledger).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.promotion import RollbackOperator


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "deployment"],
    params={
        "pipeline": pipeline_param("Pipeline whose champion to roll back"),
        "reason": Param(type="string", minLength=10, maxLength=500, description="Why (recorded in the ledger)"),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=5)),
    doc_md=__doc__,
)
def rollback() -> None:
    RollbackOperator(task_id="rollback", pipeline="{{ params.pipeline }}", reason="{{ params.reason }}", retries=1)


rollback()
