"""Maintenance phase: retrain a pipeline whose model versions an erasure flagged, through the gate and the canary.

Scheduled on `crispflow_erasure`, partitioned by `<pipeline>/<erasure_id>` (one run per erasure). The event is
trusted only if the erasure ledger records that erasure. The spec's `governance.retrain` decides: `immediate`
composes a training window of the newest (successor) versions and triggers train_evaluate_register with a run id
derived from the erasure (duplicates coalesce), whose gate and `deploy` task decide whether the new model becomes a
canary; `next_cycle` (the default) skips: the next scheduled or drift retrain replaces the flagged versions before
their deadline (`crispflow.erasure_deadline`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, PartitionedAssetTimetable, dag, task

from crispflow_airflow.assets import ERASURE
from crispflow_airflow.dag_defaults import START_DATE, default_args
from crispflow_airflow.operators.trigger_run import retrain


@dag(
    schedule=PartitionedAssetTimetable(assets=ERASURE),  # one run per `<pipeline>/<erasure_id>` key
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "maintenance", "governance"],
    params={"window_days": Param(365, type="integer", minimum=1, maximum=3650,
                                 description="Curated versions ending within this many days of the newest one")},
    default_args=default_args(execution_timeout=timedelta(hours=3)),
    doc_md=__doc__,
)
def retrain_after_erasure() -> None:
    @task.short_circuit(execution_timeout=timedelta(minutes=10))
    def resolve(**context) -> dict | None:
        """The training run the erasure asks for, or None (skip the retrain) with the reason in the log."""
        import logging

        from crispflow.erasure.retrain import plan_after_erasure
        from crispflow.governance.erasure_ledger import ErasureLedger
        from crispflow.run_requests import check_partition
        from crispflow.settings import Settings
        from crispflow_airflow.context import run_identity, triggering_events
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.hooks.lake import LakeHook

        with as_airflow_errors():
            events = triggering_events(context)
            check_partition(context["dag_run"].partition_key, events, "erasure_id")
            plan = plan_after_erasure(events, ledger=ErasureLedger(Settings.from_env().ledger_url),
                                      lake=LakeHook().get_lake(), window_days=context["params"]["window_days"],
                                      run=run_identity(context))
        if not plan["retrain"]:
            logging.getLogger(__name__).info("no retrain for erasure %s: %s", plan["erasure_id"], plan["reason"])
            return None
        return plan

    request = resolve()
    retrain(request)  # TriggerDagRunOperator, imported at run time (its module costs ~1.5 s at parse time)


retrain_after_erasure()
