"""Deployment phase: every ten minutes, judge the live canary against the champion from the prediction log and
its feedback, store the report, and promote it (old champion kept as `previous`), roll it back, or let it run on.

Nothing to do when no canary is live. Runs in the `crispflow_promotions` pool (one slot), and every alias move is
a check-and-set on the promotion ledger: concurrent promotions are serialised and the loser aborts.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag
from airflow.timetables.interval import DeltaDataIntervalTimetable

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.canary import CanaryAnalysisOperator


@dag(
    schedule=DeltaDataIntervalTimetable(timedelta(minutes=10)),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "deployment"],
    params={
        "pipeline": pipeline_param("Pipeline whose canary to judge"),
        "policy": Param({}, type="object", description="Overrides of CanaryPolicy (e.g. {\"min_labels\": 300})"),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=10)),
    render_template_as_native_obj=True,  # `policy` reaches the operator as a dict
    doc_md=__doc__,
)
def canary_analysis() -> None:
    CanaryAnalysisOperator(task_id="analyse_and_act", pipeline="{{ params.pipeline }}", policy="{{ params.policy }}")


canary_analysis()
