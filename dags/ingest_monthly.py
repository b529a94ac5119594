"""The monthly ingest of every pipeline: one `ingest_validate` run per spec in include/pipelines/, for last month.

Each pipeline's run is its own (own retries, own failure, own quality gate and dataset version), with the run id
`scheduled__<pipeline>__<interval start>`, so a rerun of this DAG finds the runs it made and triggers none twice.
A spec added to the folder is ingested from the next month on; `ingest_validate` by hand covers any past range.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task

from crispflow_airflow.dag_defaults import START_DATE, default_args
from crispflow_airflow.operators.trigger_run import TriggerRunOperator


@dag(
    # Airflow 3 cron strings have zero-length intervals; each run here covers last month, so ask for intervals.
    schedule=CronDataIntervalTimetable("@monthly", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "data"],
    default_args=default_args(execution_timeout=timedelta(minutes=10)),
    doc_md=__doc__,
)
def ingest_monthly() -> None:
    @task
    def plan(**context) -> list[dict]:
        """One `ingest_validate` request per pipeline spec, for this run's data interval."""
        from crispflow.spec import list_specs

        start, end = context["data_interval_start"], context["data_interval_end"]
        if start is None or end is None or start >= end:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("no data interval: trigger ingest_validate with start/end for a manual range")
        return [{"trigger_run_id": f"scheduled__{name}__{start:%Y-%m-%d}",
                 "conf": {"pipeline": name, "start": f"{start:%Y-%m-%d}", "end": f"{end:%Y-%m-%d}"}}
                for name in list_specs()]

    TriggerRunOperator.partial(  # TriggerDagRunOperator, imported at run time (cheap to parse)
        task_id="ingest",
        trigger_dag_id="ingest_validate",
        wait_for_completion=False,
        deferrable=False,
        skip_when_already_exists=True,  # a rerun of this month finds the runs it triggered
        map_index_template="{{ task.conf['pipeline'] }}",
    ).expand_kwargs(plan())


ingest_monthly()
