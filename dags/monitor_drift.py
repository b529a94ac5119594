"""Monitoring phase: every hour, the drift of the champion's (and a live canary's) traffic in the prediction log
against the reference profile of the version that served it.

Per alias and window: a JSON report and an HTML page with a plot per feature next to the prediction log
(`<predictions>/<model>/drift/`), a small summary the DriftSensor and the Prometheus gauges read, and the report
as artifacts of the version's MLflow run (`drift/<window>-<alias>.json|.html`). An empty window is recorded as
"insufficient_data", not a failure. A manual run judges the `window_minutes` (default 60) before it. The
thresholds are the pipeline spec's `drift_monitor:` section; a run's `settings` may only make them more sensitive.

Per pipeline: `pipelines` lists every pipeline whose model has a champion (or only the `pipeline` param, when a
manual run gives one) and `compute_drift` is mapped over them — one task instance per pipeline, each on its own
model's prediction log, reference profile and drift store, so two pipelines' windows never mix.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task
from airflow.timetables.interval import DeltaDataIntervalTimetable

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param, policy_param
from crispflow_airflow.operators.drift import MAX_WINDOW_MINUTES, DriftMonitorOperator


@dag(
    schedule=DeltaDataIntervalTimetable(timedelta(hours=1)),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "monitoring"],
    params={
        "pipeline": pipeline_param("Pipeline whose served model to monitor; empty: every pipeline with a champion",
                                   default=None),
        "window_minutes": Param(None, type=["null", "integer"], minimum=1, maximum=MAX_WINDOW_MINUTES,
                                description="Manual runs: judge this many minutes before the run "
                                            "(empty = the run's data interval)"),
        "settings": policy_param("drift_monitor", "Make the spec's drift_monitor thresholds more sensitive for this "
                                 "run (raise alpha; lower min_psi, min_drift_share)"),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=20)),
    render_template_as_native_obj=True,  # window_minutes and settings reach the operator typed
    doc_md=__doc__,
)
def monitor_drift() -> None:
    @task
    def pipelines(**context) -> list[str]:
        """The pipelines to monitor: the `pipeline` param, else every pipeline with a champion."""
        from crispflow_airflow.targets import served_pipelines

        return served_pipelines(context)

    DriftMonitorOperator.partial(
        task_id="compute_drift", window_minutes="{{ params.window_minutes }}", settings="{{ params.settings }}",
        map_index_template="{{ task.pipeline }}",
    ).expand(pipeline=pipelines())


monitor_drift()
