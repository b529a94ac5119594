"""Deployment phase: every ten minutes, judge the live canary against the champion from the prediction log and
its feedback, store the report, and promote it (old champion kept as `previous`), roll it back, or let it run on.

Nothing to do when no canary is live. Runs in the `crispflow_promotions` pool (one slot), and every alias move is
a check-and-set on the promotion ledger: concurrent promotions are serialised and the loser aborts.

The policy is the pipeline spec's `canary:` section; a run's `policy` param may only tighten it (the Params
schema refuses unknown fields and wrong types at trigger time, the task refuses a loosening value without retry).

Per pipeline: `pipelines` lists every pipeline whose model has a champion (or only the `pipeline` param of a
manual run) and `analyse_and_act` is mapped over them, each judging its own model's canary on its own traffic.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task
from airflow.timetables.interval import DeltaDataIntervalTimetable

from crispflow.pools import PROMOTIONS
from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param, policy_param
from crispflow_airflow.operators.canary import CanaryAnalysisOperator


@dag(
    schedule=DeltaDataIntervalTimetable(timedelta(minutes=10)),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "deployment"],
    params={
        "pipeline": pipeline_param("Pipeline whose canary to judge; empty: every pipeline with a champion",
                                   default=None),
        "policy": policy_param("canary", "Tighten the spec's canary policy for this run (e.g. {\"min_labels\": "
                               "300}); a loosening value fails the run naming the field"),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=10)),
    render_template_as_native_obj=True,  # `policy` reaches the operator as a dict
    doc_md=__doc__,
)
def canary_analysis() -> None:
    @task
    def pipelines(**context) -> list[str]:
        """The pipelines to judge: the `pipeline` param, else every pipeline with a champion."""
        from crispflow_airflow.targets import served_pipelines

        return served_pipelines(context)

    CanaryAnalysisOperator.partial(  # the pool explicitly: a mapped task does not see the operator's default
        task_id="analyse_and_act", policy="{{ params.policy }}", pool=PROMOTIONS,
        map_index_template="{{ task.pipeline }}",
    ).expand(pipeline=pipelines())


canary_analysis()
