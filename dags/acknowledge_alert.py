"""Monitoring phase: acknowledge a drift alert (the Drift page's *Acknowledge* button, or one REST call).

The alert `key` (its dedup key, `<model>.<episode id>`) of the pipeline's model is marked acknowledged by the user
who triggered the run, with their note. Exclusive: the first acknowledgement wins; acknowledging it again fails
the run without retry, naming who acknowledged it first. Runs one at a time.

Where Alertmanager is configured (the `crispflow_alertmanager` connection: prod-local, docker-compose.yaml), the
acknowledgement also silences the Prometheus side of the same alert: a silence on its `dedup_key` label, created by
the same person with the same note (crispflow.monitoring.silences).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.alerts import AcknowledgeAlertOperator


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "monitoring"],
    params={
        "pipeline": pipeline_param("Pipeline whose drift alert to acknowledge"),
        "key": Param(type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,250}\.[a-z][a-z0-9_]*-[0-9]{8}T[0-9]{6}Z$",
                     description="The alert's dedup key (<model>.<episode id>)"),
        "note": Param("", type="string", maxLength=500, description="What you are doing about it (recorded)"),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=5)),
    doc_md=__doc__,
)
def acknowledge_alert() -> None:
    AcknowledgeAlertOperator(task_id="acknowledge", pipeline="{{ params.pipeline }}", key="{{ params.key }}",
                             note="{{ params.note }}", retries=1)


acknowledge_alert()
