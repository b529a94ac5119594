"""Model versions that learned from, or were judged on, an erased subject's rows: flagged in the registry.

A version is affected when its `crispflow.dataset_version_id` is a dataset version the erasure superseded, or its
`crispflow.holdout_hash` is the holdout the erasure replaced. Each gets the tags `crispflow.erasure_pending`
(the erasure id) and `crispflow.erasure_deadline` (the date by which it must be retrained or retired: one month
by default, GDPR art. 12(3)).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

PENDING = "crispflow.erasure_pending"
DEADLINE = "crispflow.erasure_deadline"
DATASET_TAG = "crispflow.dataset_version_id"
HOLDOUT_TAG = "crispflow.holdout_hash"


def affected(mlf: MlflowClient, model: str, datasets: set[str], holdouts: set[str]) -> list[Any]:
    """The registered versions of `model` trained on one of `datasets` or evaluated on one of `holdouts` (one
    registry search per id, filtered by tag, as `registry.find_version` does)."""
    found: dict[int, Any] = {}
    for tag, values in ((DATASET_TAG, datasets), (HOLDOUT_TAG, holdouts)):
        for value in sorted(values):
            for version in mlf.search_model_versions(f"name = '{model}' and tags.`{tag}` = '{value}'"):
                found[int(version.version)] = version
    return [found[number] for number in sorted(found)]


def flag(mlf: MlflowClient, model: str, datasets: set[str], holdouts: set[str], erasure_id: str,
         deadline_days: int) -> list[dict[str, str]]:
    """Tag every affected version (idempotent: a version this erasure flagged before keeps its deadline)."""
    deadline = (datetime.now(UTC) + timedelta(days=deadline_days)).date().isoformat()
    flagged = []
    for version in affected(mlf, model, datasets, holdouts):
        due = version.tags.get(DEADLINE, deadline) if version.tags.get(PENDING) == erasure_id else deadline
        if version.tags.get(PENDING) != erasure_id:
            mlf.set_model_version_tag(model, version.version, PENDING, erasure_id)
            mlf.set_model_version_tag(model, version.version, DEADLINE, due)
        flagged.append({"model": model, "version": str(version.version), "deadline": due})
    return flagged
