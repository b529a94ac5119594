"""Maintenance phase: watch the drift store and request a retrain once per drift episode, with one alert digest.

Every hour a deferrable `DriftSensor` waits (in the triggerer, up to 55 minutes) until drift persists in k of the
last n monitoring windows, outside the cooldown and the retrain budget, with enough new labels
(`crispflow.monitoring.episodes.DriftPolicy`; override with the `policy` param). It records the episode in the
store exclusively and emits `crispflow_drift_detected` with the reason, which schedules `retrain_on_drift`; then
`alert` sends one digest of the incident to the configured channels. No episode this hour: both are skipped.

Per pipeline: `pipelines` lists every pipeline whose model has a champion (or only the `pipeline` param of a
manual run); `watch` and `alert` form a task group mapped over them, so each pipeline has its own sensor (its own
drift store, episodes and cooldown) and its alert follows its own sensor only. The event's partition key
`<pipeline>/<episode_id>` makes `retrain_on_drift` retrain exactly the pipeline that drifted.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task, task_group

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.sensors.drift import DriftSensor

CHANNELS = [{"kind": "webhook", "conn_id": "crispflow_alerts_webhook", "optional": True},
            {"kind": "slack", "conn_id": "crispflow_alerts_slack", "optional": True}]


@dag(
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # one run (one sensor per pipeline) at a time; the episode record makes even two safe
    tags=["crispflow", "monitoring"],
    params={
        "pipeline": pipeline_param("Pipeline whose champion to watch; empty: every pipeline with a champion",
                                   default=None),
        "policy": Param({}, type="object", description="Overrides of DriftPolicy, e.g. {\"k\": 3, \"n\": 4}"),
        "alert_channels": Param(CHANNELS, type="array", items={"type": "object"},
                                description="Alert channels: webhook / slack (http connection), email (smtp)"),
    },
    default_args=default_args(execution_timeout=timedelta(hours=1)),
    render_template_as_native_obj=True,  # `policy` and `alert_channels` reach the operators as objects
    doc_md=__doc__,
)
def watch_drift() -> None:
    @task
    def pipelines(**context) -> list[str]:
        """The pipelines to watch: the `pipeline` param, else every pipeline with a champion."""
        from crispflow_airflow.targets import served_pipelines

        return served_pipelines(context, allowed_conf=("pipeline", "policy", "alert_channels"))

    @task
    def alert(record: dict, **context) -> dict:
        """One digest per episode: deduplicated in the store, so a retry or a second run sends nothing twice."""
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.notifiers.alerts import DriftAlertNotifier

        with as_airflow_errors():
            return DriftAlertNotifier(channels=context["params"]["alert_channels"], record=record).send(context)

    @task_group(prefix_group_id=False)
    def per_pipeline(pipeline: str) -> None:
        """One pipeline's sensor and, when it fires, its alert (mapped: the alert of index i follows sensor i)."""
        watch = DriftSensor(task_id="watch", pipeline=pipeline, policy="{{ params.policy }}",
                            poke_interval=120, timeout=timedelta(minutes=55), map_index_template="{{ task.pipeline }}")
        alert(watch.output)

    per_pipeline.expand(pipeline=pipelines())


watch_drift()
