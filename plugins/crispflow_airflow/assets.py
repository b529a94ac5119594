"""The assets crispflow's DAGs talk through. Events carry ids in `extra`, never data.

Every event is partitioned per pipeline: its partition key is `<pipeline>/<id>` (`crispflow.run_requests.
partition_key`: the dataset version, the drift episode, the scored dataset and model version). The consumers are
scheduled with `PartitionedAssetTimetable`, so the scheduler creates one run per key (Airflow queues one
`AssetPartitionDagRun` per key and creates every run, also past `max_active_runs`, which only delays their start):
three pipelines publishing in the same second are three training runs, and two pipelines' events never meet in one
run. An event without a key triggers nothing (Airflow logs "missing partition key").

Why one asset per kind with keyed events, and not an asset (URI) per pipeline: a DAG scheduled on several assets
still gets one run for every event queued since its last run, so per-pipeline assets alone would coalesce; they
would also have to be listed at parse time from the specs folder. Keys need neither, and a new spec needs no DAG
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset

# Name-only assets: a URI with a scheme makes Airflow load every provider's URI handlers (~1.2 s) at parse time.
# Key `<pipeline>/<dataset_version_id>`, emitted by PublishDatasetOperator for the run that published the version.
CURATED_DATASET = Asset(name="crispflow_curated_dataset")
# Key `<pipeline>/<episode_id>`, emitted by DriftSensor (dags/watch_drift.py) once per drift episode; `extra`
# carries the reason (features, statistics, windows) and the episode id, which retrain_on_drift checks against the
# episode record in the store.
DRIFT_DETECTED = Asset(name="crispflow_drift_detected")
# Key `<pipeline>/<dataset_version_id>.v<model_version>`: batch scores committed by CommitScoresOperator.
BATCH_SCORES = Asset(name="crispflow_batch_scores")
# Key `<pipeline>/<erasure_id>`: an erasure that flagged model versions (EraseSubjectOperator); `extra` carries the
# ids, which retrain_after_erasure checks against the erasure ledger.
ERASURE = Asset(name="crispflow_erasure")


def emit_once(context: Any, made_by: Mapping[str, Any], extra: dict[str, Any], *, asset: Asset, pipeline: str,
              item: str, keys: tuple[str, ...] = ("dag_id", "run_id")) -> bool:
    """Emit the event of something stored exactly once, keyed `<pipeline>/<item>`: only when `made_by` (the stored
    record's author) is this run (any try of it, so a retry after a crash still emits). A rerun that found it made
    by another run emits nothing: `asset` is withdrawn from this task's outlets for this execution (Airflow
    registers an event for every outlet asset of a successful task, keyed or not, and partition keys cannot travel
    through an AssetAlias). Returns whether the event was emitted."""
    from crispflow.run_requests import partition_key

    ti = context["ti"]
    if any(made_by.get(k) != getattr(ti, k) for k in keys):
        _withhold(context, asset)
        return False
    event = context["outlet_events"][asset]
    event.extra = extra
    event.add_partitions(partition_key(pipeline, item))
    return True


def _withhold(context: Any, asset: Asset) -> None:
    """Drop `asset` from the running task's outlets (a copy made for this execution: the DAG is untouched); the
    task runner reads them when it reports success."""
    task = context.get("task") if isinstance(context, Mapping) else None
    if task is not None:
        task.outlets = [o for o in task.outlets if not (isinstance(o, Asset) and o.name == asset.name)]
