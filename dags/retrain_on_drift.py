"""Maintenance phase: retrain when the drift sensor reports an episode, through the blessing gate and the canary.

Scheduled on `crispflow_drift_detected`. The event is only trusted if it matches the episode the sensor recorded in
the monitoring store (a malformed or forged event fails with InvalidRequest). Training runs on a training window:
the curated versions whose intervals end within `window_days` of the newest one (monthly ingests are too small
alone), composed into one version whose manifest names its parents. `train_evaluate_register` is triggered with a
run id derived from the episode, so duplicate events coalesce into one training run, and its gate and `deploy`
task decide whether the new model becomes a canary — never straight to production. One retrain at a time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from crispflow_airflow.assets import DRIFT_DETECTED
from crispflow_airflow.dag_defaults import START_DATE, default_args
from crispflow_airflow.operators.trigger_run import TriggerRunOperator


@dag(
    schedule=[DRIFT_DETECTED],
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
    @task(multiple_outputs=True)
    def resolve(**context) -> dict:
        """Validate the newest drift event against the store; pick the dataset to retrain on."""
        from crispflow.data import training_window
        from crispflow.errors import LakeError, ParamsError
        from crispflow.monitoring.episodes import check_event, retrain_run_id
        from crispflow.run_requests import reject_unknown
        from crispflow.settings import Settings
        from crispflow_airflow.context import run_identity
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.operators._common import spec_and_lake
        from crispflow_airflow.sensors.drift import read_episode
        from crispflow_airflow.triggers.drift import store_root

        events = [e.extra for evs in (context.get("triggering_asset_events") or {}).values() for e in evs]
        with as_airflow_errors():
            reject_unknown(context["dag_run"].conf, {"window_days"})
            if not events:
                raise ParamsError("drift event: this DAG runs on a crispflow_drift_detected event, none arrived")
            extra = events[-1]  # the newest; older ones are coalesced (and each has its own deterministic run id)
            settings = Settings.from_env()
            root = store_root(settings.predictions_url, settings.lake_conn_id)
            event = check_event(extra, lambda model, episode: read_episode(root, model, episode))
            spec, lake = spec_and_lake(event["pipeline"])
            if spec.training is None:
                raise ParamsError(f"pipeline: {spec.name!r} has no training section in its spec")
            try:
                window = training_window.select(lake, spec.name, int(context["params"]["window_days"]))
                published = training_window.compose(lake, spec, window, run_identity(context))
            except LakeError as exc:
                raise ParamsError(f"dataset: {exc}") from exc
            rows = published.manifest["rows"]["published"]
            if rows < spec.training.min_rows:
                raise ParamsError(f"dataset: the training window {published.version_id} has {rows} rows "
                                  f"< training.min_rows={spec.training.min_rows}")
        return {"conf": {"pipeline": spec.name, "dataset_version_id": published.version_id},
                "run_id": retrain_run_id(event["model"], event["episode_id"]), "episode_id": event["episode_id"],
                "coalesced_events": len(events) - 1}

    request = resolve()
    TriggerRunOperator(  # TriggerDagRunOperator, imported at run time (its module costs ~1.5 s at parse time)
        task_id="retrain",
        trigger_dag_id="train_evaluate_register",
        trigger_run_id=request["run_id"],
        conf=request["conf"],
        wait_for_completion=True,
        deferrable=True,
        poke_interval=60,
        skip_when_already_exists=True,  # the same episode again: its training run exists already
        execution_timeout=timedelta(hours=3),
    )


retrain_on_drift()
