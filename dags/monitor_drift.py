"""Monitoring phase: every hour, the drift of the champion's (and a live canary's) traffic in the prediction log
against the reference profile of the version that served it.

Per alias and window: a JSON report and an HTML page with a plot per feature next to the prediction log
(`<predictions>/<model>/drift/`), a small summary the DriftSensor and the Prometheus gauges read, and the report
as artifacts of the version's MLflow run (`drift/<window>-<alias>.json|.html`). An empty window is recorded as
"insufficient_data", not a failure. A manual run judges the `window_minutes` (default 60) before it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag
from airflow.timetables.interval import DeltaDataIntervalTimetable

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.drift import MAX_WINDOW_MINUTES, DriftMonitorOperator


@dag(
    schedule=DeltaDataIntervalTimetable(timedelta(hours=1)),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "monitoring"],
    params={
        "pipeline": pipeline_param("Pipeline whose served model to monitor"),
        "window_minutes": Param(None, type=["null", "integer"], minimum=1, maximum=MAX_WINDOW_MINUTES,
                                description="Manual runs: judge this many minutes before the run "
                                            "(empty = the run's data interval)"),
        "settings": Param({}, type="object",
                          description="Overrides of DriftSettings (alpha, min_psi, min_drift_share, min_rows)"),
    },
    default_args=default_args(execution_timeout=timedelta(minutes=20)),
    render_template_as_native_obj=True,  # window_minutes and settings reach the operator typed
    doc_md=__doc__,
)
def monitor_drift() -> None:
    DriftMonitorOperator(task_id="compute_drift", pipeline="{{ params.pipeline }}",
                         window_minutes="{{ params.window_minutes }}", settings="{{ params.settings }}")


monitor_drift()
