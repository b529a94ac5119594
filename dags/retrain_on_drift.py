"""Maintenance phase: retrain when the drift sensor reports an episode, through the blessing gate and the canary.

Scheduled on `crispflow_drift_detected`, partitioned by `<pipeline>/<episode_id>` (a `PartitionedAssetTimetable`):
one run per drift episode, retraining the pipeline that drifted — two pipelines' episodes never share a run. The
event is only trusted if it matches the run's partition key and the episode the sensor recorded in the monitoring
store (a malformed or forged event fails with InvalidRequest). Training runs on a training window:
the curated versions whose intervals end within `window_days` of the newest one (monthly ingests are too small
alone), composed into one version whose manifest names its parents. `train_evaluate_register` is triggered with a
run id derived from the episode, so duplicate events coalesce into one training run, and its gate and `deploy`
task decide whether the new model becomes a canary — never straight to production. One retrain at a time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, PartitionedAssetTimetable, dag

from crispflow_airflow.assets import DRIFT_DETECTED
from crispflow_airflow.dag_defaults import START_DATE, default_args
from crispflow_airflow.operators.retrain import PlanRetrainOperator
from crispflow_airflow.operators.trigger_run import retrain


@dag(
    schedule=PartitionedAssetTimetable(assets=DRIFT_DETECTED),  # one run per `<pipeline>/<episode_id>` key
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "maintenance"],
    params={"window_days": Param(365, type="integer", minimum=1, maximum=3650,
                                 description="Curated versions ending within this many days of the newest one")},
    default_args=default_args(execution_timeout=timedelta(hours=3)),
    doc_md=__doc__,
)
def retrain_on_drift() -> None:
    # the training window composed of the newest curated versions (an operator: it reports OpenLineage, parents →
    # composed version)
    request = PlanRetrainOperator(task_id="resolve").output
    retrain(request)  # TriggerDagRunOperator, imported at run time (its module costs ~1.5 s at parse time)


retrain_on_drift()
