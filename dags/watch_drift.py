"""Maintenance phase: watch the drift store and request a retrain once per drift episode, with one alert digest.

Every hour a deferrable `DriftSensor` waits (in the triggerer, up to 55 minutes) until drift persists in k of the
last n monitoring windows, outside the cooldown and the retrain budget, with enough new labels
(the pipeline spec's `drift_watch:` section; a run's `policy` param may only tighten it). It records the episode in the
store exclusively and emits `crispflow_drift_detected` with the reason, which schedules `retrain_on_drift`; then
`alert` sends one digest of the incident to the channels of the spec's `alerts:` section (a run cannot
redirect alerts: a conf carrying `alert_channels` fails as an unknown key). No episode this hour: both are skipped.

Per pipeline: `pipelines` lists every pipeline whose model has a champion (or only the `pipeline` param of a
manual run); `watch` and `alert` form a task group mapped over them, so each pipeline has its own sensor (its own
drift store, episodes and cooldown) and its alert follows its own sensor only. The event's partition key
`<pipeline>/<episode_id>` makes `retrain_on_drift` retrain exactly the pipeline that drifted.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task, task_group

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param, policy_param
from crispflow_airflow.sensors.drift import DriftSensor


@dag(
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    # An hourly run's sensors wait (deferred, no worker slot) up to 55 min; a run for one pipeline (REST, the demo,
    # a person) must not queue behind it. Two sensors for one pipeline are safe: an episode is claimed exclusively.
    max_active_runs=4,
    tags=["crispflow", "monitoring"],
    params={
        "pipeline": pipeline_param("Pipeline whose champion to watch; empty: every pipeline with a champion",
                                   default=None),
        "policy": policy_param("drift_watch", "Tighten the spec's drift_watch policy for this run, e.g. "
                               "{\"k\": 1, \"cooldown_hours\": 12}"),
    },
    default_args=default_args(execution_timeout=timedelta(hours=1)),
    render_template_as_native_obj=True,  # `policy` reaches the sensor as an object
    doc_md=__doc__,
)
def watch_drift() -> None:
    @task
    def pipelines(**context) -> list[str]:
        """The pipelines to watch: the `pipeline` param, else every pipeline with a champion."""
        from crispflow_airflow.targets import served_pipelines

        return served_pipelines(context)

    @task
    def alert(record: dict, **context) -> dict:
        """One digest per episode to the spec's channels: deduplicated in the store, so a retry or a second run
        sends nothing twice."""
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.notifiers.alerts import DriftAlertNotifier, spec_channels

        with as_airflow_errors():
            return DriftAlertNotifier(channels=spec_channels(record["pipeline"]), record=record).send(context)

    @task
    def aliases_agree(pipeline: str, **context) -> dict:
        """An alias moved in MLflow outside crispflow is recorded in the ledger (person unknown) and fails this task
        once without retry, naming the alias and versions; the next run finds the ledger agreeing."""
        from crispflow.release.promotion import check_outside_moves
        from crispflow_airflow.context import task_key
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.jobs import release_clients

        mlf, ledger, model = release_clients(pipeline)
        with as_airflow_errors():
            check_outside_moves(mlf, ledger, model, actor=task_key(context))
        return {"pipeline": pipeline, "agree": True}

    @task_group(prefix_group_id=False)
    def per_pipeline(pipeline: str) -> None:
        """One pipeline's ledger check, its sensor and, when it fires, its alert (mapped: index i is pipeline i)."""
        watch = DriftSensor(task_id="watch", pipeline=pipeline, policy="{{ params.policy }}",
                            poke_interval=120, timeout=timedelta(minutes=55), map_index_template="{{ task.pipeline }}")
        alert(watch.output)
        aliases_agree(pipeline)

    per_pipeline.expand(pipeline=pipelines())


watch_drift()
