"""The frozen holdout: cut once per pipeline, content-hashed, stored, and reused for every comparison.

Champion and challenger are only ever compared on the same rows. The first training run of a pipeline cuts the
holdout from its dataset version (time-based or stratified, per the spec) and commits a pointer exclusively;
later runs train on their dataset minus the holdout's keys (no leakage) and evaluate on the same holdout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import LakeError
from crispflow.lake import Lake, canonical_json, create_exclusive, read_json, read_parquet, write_parquet

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.spec import PipelineSpec


def _pointer(lake: Lake, pipeline: str) -> Any:
    return lake.root / "holdouts" / pipeline / "frozen.json"


def frozen_record(lake: Lake, pipeline: str) -> dict[str, Any]:
    """The record of the pipeline's frozen holdout (hash, rows, file); LakeError before the first training."""
    pointer = _pointer(lake, pipeline)
    if not pointer.exists():
        raise LakeError(f"{pipeline} has no frozen holdout yet (it is cut by the first training run)")
    return read_json(pointer)


def frozen_holdout(lake: Lake, spec: PipelineSpec, dataset: pd.DataFrame,
                   dataset_version_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pipeline's holdout and its record; cut from `dataset` if this is the pipeline's first training."""
    from crispflow.model.training import holdout_hash, holdout_split

    pointer = _pointer(lake, spec.name)
    if not pointer.exists():
        _, holdout = holdout_split(spec, dataset)
        digest = holdout_hash(spec, holdout)
        path = lake.root / "holdouts" / spec.name / f"{digest}.parquet"
        write_parquet(path, holdout)
        record = {"holdout_hash": digest, "rows": len(holdout), "cut_from": dataset_version_id,
                  "strategy": spec.split.strategy, "file": lake.relative(path),
                  "frozen_at": datetime.now(UTC).isoformat()}
        create_exclusive(pointer, canonical_json(record))  # a concurrent first run may have won: read it back
    record = read_json(pointer)
    holdout = read_parquet(lake.root / record["file"])
    if holdout_hash(spec, holdout) != record["holdout_hash"]:
        raise LakeError(f"holdout of {spec.name}: content does not match {record['holdout_hash'][:12]} (tampered?)")
    return holdout, record


def training_rows(spec: PipelineSpec, dataset: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    """The dataset without any entity that is in the holdout."""
    keep = ~dataset[spec.key].isin(holdout[spec.key])
    return dataset[keep].reset_index(drop=True)
