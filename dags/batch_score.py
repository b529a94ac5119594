"""Batch scoring, scaled out by partition: plan row ranges of a dataset version → score each range on any worker
(dynamic task mapping) → commit once.

Trigger by hand or through the REST API with `pipeline`, `dataset_version_id` (empty: the newest published
version, resolved when the run starts), `alias` (default `champion`; the version it points at is pinned for the
whole run) and `partition_rows`. Predictions land in
`scores/<pipeline>/<dataset_version_id>/v<model_version>/part-<index>.parquet`, each created once, and a
`_SUCCESS` manifest (rows in == rows scored, model version and hash, lineage) is written last; the run that
commits emits `crispflow_batch_scores` (partition key `<pipeline>/<dataset_version_id>.v<model_version>`). Reruns
and concurrent duplicates produce the same files and no second event. One run scores one pipeline.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.scoring import CommitScoresOperator, PlanScoringOperator, ScorePartitionOperator

PARAMS = {
    "pipeline": pipeline_param("Pipeline spec name (include/pipelines/<name>.yaml)"),
    "dataset_version_id": Param(None, type=["null", "string"], pattern=r"^ds-[0-9a-f]{16}$",
                                description="Curated dataset version to score; empty: the newest published"),
    "alias": Param("champion", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$",
                   description="Registry alias of the model; its current version is pinned for the run"),
    "partition_rows": Param(1_000_000, type="integer", minimum=1_000, maximum=10_000_000,
                            description="Most rows per partition (one mapped task each)"),
}
OUTPUT = "{{ ti.xcom_pull(task_ids='plan', key='plan')['output'] }}"


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    tags=["crispflow", "scoring"],
    params=PARAMS,
    default_args=default_args(execution_timeout=timedelta(hours=1)),
    doc_md=__doc__,
)
def batch_score() -> None:
    plan = PlanScoringOperator(
        task_id="plan", pipeline="{{ params.pipeline }}", dataset_version_id="{{ params.dataset_version_id or '' }}",
        alias="{{ params.alias }}", partition_rows="{{ params.partition_rows }}")
    scored = ScorePartitionOperator.partial(task_id="score", output_dir=OUTPUT).expand(partition=plan.output)
    CommitScoresOperator(task_id="commit", output_dir=OUTPUT, results=scored.output)


batch_score()
