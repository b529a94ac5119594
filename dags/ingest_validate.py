"""Data phases of CRISP-ML(Q): ingest every source for an interval → GX quality gate → publish a dataset version.

One pipeline per run: `ingest_monthly` triggers one run per spec each month (last month's interval); trigger it
by hand or through the REST API with `pipeline` and `start`/`end` for any range. Bad rows are quarantined with
reasons, bad batches fail without retries, and a published version emits `crispflow_curated_dataset` with its id
in `extra` and the partition key `<pipeline>/<dataset_version_id>`, which starts exactly one
`train_evaluate_register` run for it (a rerun that finds the version already published emits nothing).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.ingest import IngestOperator
from crispflow_airflow.operators.publish import PublishDatasetOperator
from crispflow_airflow.operators.quality_gate import DataQualityGateOperator

PARAMS = {
    "pipeline": pipeline_param("Pipeline spec in include/pipelines/ (file name without .yaml)"),
    "start": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}-\d{2}$",
                   description="First day to ingest (YYYY-MM-DD); empty: the run's data interval"),
    "end": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}-\d{2}$",
                 description="Day after the last day to ingest (YYYY-MM-DD)"),
}
BATCH_ID = "{{ ti.xcom_pull(task_ids='ingest')['batch_id'] }}"


@dag(
    schedule=None,  # ingest_monthly starts one run per pipeline; by hand or REST for any range
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    tags=["crispflow", "data"],
    params=PARAMS,
    default_args=default_args(execution_timeout=timedelta(minutes=30)),
    doc_md=__doc__,
)
def ingest_validate() -> None:
    pipeline = "{{ params.pipeline }}"
    ingest = IngestOperator(task_id="ingest", pipeline=pipeline, start="{{ params.start or '' }}",
                            end="{{ params.end or '' }}")
    gate = DataQualityGateOperator(task_id="validate", pipeline=pipeline, batch_id=BATCH_ID)
    publish = PublishDatasetOperator(task_id="publish", pipeline=pipeline, batch_id=BATCH_ID)
    ingest >> gate >> publish


ingest_validate()
