"""Model versions that learned from, or were judged on, an erased subject's rows: flagged in the registry.

A version is affected when its `crispflow.dataset_version_id` is a dataset version the erasure superseded, or its
`crispflow.holdout_hash` is the holdout the erasure replaced, or one that an earlier erasure replaced by either
(`learned_from`: those held the subject too). Each gets the tags `crispflow.erasure_pending` (the erasure id) and
`crispflow.erasure_deadline` (the date by which it must be retrained or retired: one month by default, GDPR art.
12(3)); a deadline never moves later, so a version an earlier erasure flagged keeps that erasure's date.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.lake import Lake

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


def learned_from(lake: Lake, pipeline: str, datasets: set[str], holdouts: set[str]) -> tuple[set[str], set[str]]:
    """The dataset versions and holdout hashes a model may have learned the subject from: `datasets` with every
    version an earlier erasure replaced by one of them, `holdouts` with every holdout replaced before them."""
    from crispflow.data.datasets import predecessors
    from crispflow.errors import LakeError
    from crispflow.model.holdout import frozen_record, lineage

    versions = {v for d in datasets for v in predecessors(lake, pipeline, d)} | set(datasets)
    try:
        chain = lineage(frozen_record(lake, pipeline))
    except LakeError:  # no holdout frozen yet
        chain = []
    judged = set(holdouts)
    for i, digest in enumerate(chain):
        if digest in holdouts:
            judged.update(chain[: i + 1])
    return versions, judged


def at_stake(mlf: MlflowClient, model: str, lake: Lake, pipeline: str, datasets: set[str],
             holdouts: set[str]) -> list[Any]:
    """The versions an erasure of a subject found in `datasets` and `holdouts` would flag (`learned_from`)."""
    return affected(mlf, model, *learned_from(lake, pipeline, datasets, holdouts))


def flag(mlf: MlflowClient, model: str, datasets: set[str], holdouts: set[str], erasure_id: str,
         deadline_days: int) -> list[dict[str, str]]:
    """Tag every affected version. Idempotent, and a deadline never moves later: a version this erasure, or an
    earlier one with an earlier or equal deadline, flagged keeps its tags (the ledger lists it either way)."""
    deadline = (datetime.now(UTC) + timedelta(days=deadline_days)).date().isoformat()
    flagged = []
    for version in affected(mlf, model, datasets, holdouts):
        pending, due = version.tags.get(PENDING), version.tags.get(DEADLINE)
        if not (pending and due and (pending == erasure_id or due <= deadline)):
            pending, due = erasure_id, deadline
            mlf.set_model_version_tag(model, version.version, PENDING, pending)
            mlf.set_model_version_tag(model, version.version, DEADLINE, due)
        flagged.append({"model": model, "version": str(version.version), "deadline": due, "erasure": pending})
    return flagged
