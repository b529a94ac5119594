"""The assets crispflow's DAGs talk through. Events carry ids in `extra`, never data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, AssetAlias

# Name-only assets: a URI with a scheme makes Airflow load every provider's URI handlers (~1.2 s) at parse time.
CURATED_DATASET = Asset(name="crispflow_curated_dataset")
# Publishing declares the alias and attaches CURATED_DATASET to it only when it really published a new version,
# so a rerun that finds its version already published emits no second event.
CURATED_DATASET_PUBLISHED = AssetAlias(name="crispflow_curated_dataset_published")
# Emitted by DriftSensor (dags/watch_drift.py) once per drift episode; `extra` carries the reason (features,
# statistics, windows) and the episode id, which retrain_on_drift checks against the episode record in the store.
DRIFT_DETECTED = Asset(name="crispflow_drift_detected")
# Batch scores of a dataset version by a model version; attached to the alias only by the run that committed them.
BATCH_SCORES = Asset(name="crispflow_batch_scores")
BATCH_SCORES_COMMITTED = AssetAlias(name="crispflow_batch_scores_committed")


def emit_once(context: Any, made_by: Mapping[str, Any], extra: dict[str, Any], *, outlet: Asset | AssetAlias,
              asset: Asset | None = None, keys: tuple[str, ...] = ("dag_id", "run_id")) -> bool:
    """Emit the event of something stored exactly once: only when `made_by` (the stored record's author) is this
    run (any try of it, so a retry after a crash still emits); a rerun that found it made by another run emits
    nothing. Through an alias, `asset` is attached to it. Returns whether the event was emitted."""
    ti = context["ti"]
    if any(made_by.get(k) != getattr(ti, k) for k in keys):
        return False
    if asset is None:
        context["outlet_events"][outlet].extra = extra
    else:
        context["outlet_events"][outlet].add(asset, extra=extra)
    return True
