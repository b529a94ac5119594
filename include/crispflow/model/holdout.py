"""The frozen holdout: cut once per pipeline, content-hashed, stored, and reused for every comparison.

Champion and challenger are only ever compared on the same rows. The first training run of a pipeline cuts the
holdout from its dataset version (time-based, stratified by class or random, per the spec, seeded by `split.seed`)
and commits a pointer exclusively; later runs train on their dataset minus the holdout's keys (no leakage) and
evaluate on the same holdout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError, LakeError
from crispflow.lake import Lake, canonical_json, create_exclusive, read_json, read_parquet, remove, write_parquet

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from crispflow.spec import PipelineSpec


# --- the cut ----------------------------------------------------------------------------------------------


def _time_holdout_mask(spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    """The latest whole periods (distinct time values) holding at least `holdout_fraction` of the rows.

    Periods are taken newest first until the holdout has >= fraction * rows; no period is ever split, so the
    holdout is usually a little larger than the fraction. Rows without a time value stay in training.
    At least one period must remain for training.
    """
    import numpy as np

    from crispflow.data.extracts import to_utc_naive

    when = to_utc_naive(frame[spec.time_column])
    rows_per_period = when.value_counts().sort_index(ascending=False)  # newest first, NaT dropped
    need = spec.split.holdout_fraction * len(frame)
    taken = int(np.searchsorted(rows_per_period.cumsum().to_numpy(), need)) + 1  # periods in the holdout
    if taken >= len(rows_per_period):
        raise CrispflowError(
            f"{spec.name}: split: a time holdout of {spec.split.holdout_fraction:.0%} of {len(frame)} rows needs "
            f"{taken} of the {len(rows_per_period)} periods of {spec.time_column!r}, leaving none for training"
        )
    cutoff = rows_per_period.index[taken - 1]
    return (when >= cutoff).to_numpy(dtype=bool)


def _mask(rows: int, picked: np.ndarray) -> np.ndarray:
    import numpy as np

    mask = np.zeros(rows, dtype=bool)
    mask[picked] = True
    return mask


def _stratified_holdout_mask(spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    """StratifiedShuffleSplit by class label (binary or multiclass), seeded by `split.seed`."""
    import numpy as np
    from sklearn.model_selection import StratifiedShuffleSplit

    from crispflow.model.tasks import labels

    if spec.task == "regression":
        raise CrispflowError(f"{spec.name}: split.strategy: 'stratified' needs class labels; a regression target "
                             f"splits 'random' or 'time'")
    y = labels(spec, frame)
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=spec.split.holdout_fraction, random_state=spec.split.seed)
    _, holdout = next(splitter.split(np.zeros((len(y), 1)), y))
    return _mask(len(y), holdout)


def _random_holdout_mask(spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    """ShuffleSplit of the rows, seeded by `split.seed` (any task)."""
    import numpy as np
    from sklearn.model_selection import ShuffleSplit

    splitter = ShuffleSplit(n_splits=1, test_size=spec.split.holdout_fraction, random_state=spec.split.seed)
    _, holdout = next(splitter.split(np.zeros((len(frame), 1))))
    return _mask(len(frame), holdout)


_STRATEGIES = {"time": _time_holdout_mask, "stratified": _stratified_holdout_mask, "random": _random_holdout_mask}


def holdout_split(spec: PipelineSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout), each in the frame's row order with its index. `split.strategy` "time": the latest whole
    periods (see `_time_holdout_mask`); "stratified": StratifiedShuffleSplit by class; "random": ShuffleSplit;
    both seeded by `split.seed`."""
    mask = _STRATEGIES[spec.split.strategy](spec, frame)
    return frame[~mask], frame[mask]


def holdout_hash(spec: PipelineSpec, holdout: pd.DataFrame) -> str:
    """Content hash of a holdout, independent of row order and index: `frame_digest` of the rows sorted by
    `spec.key`, as stored in parquet (so an in-memory frame and its stored copy hash alike: object text columns
    read back as pandas `str`)."""
    import io

    import pandas as pd

    from crispflow.lake import frame_digest, parquet_bytes

    ordered = holdout.sort_values(spec.key, kind="mergesort")
    return frame_digest(pd.read_parquet(io.BytesIO(parquet_bytes(ordered))))


# --- frozen once per pipeline -----------------------------------------------------------------------------


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
    pointer = _pointer(lake, spec.name)
    record = read_json(pointer) if pointer.exists() else freeze(lake, spec, holdout_split(spec, dataset)[1],
                                                                  dataset_version_id)
    holdout = read_parquet(lake.root / record["file"])
    if holdout_hash(spec, holdout) != record["holdout_hash"]:
        raise LakeError(f"holdout of {spec.name}: content does not match {record['holdout_hash'][:12]} (tampered?)")
    return holdout, record


def freeze(lake: Lake, spec: PipelineSpec, holdout: pd.DataFrame, cut_from: str) -> dict[str, Any]:
    """Store `holdout` as the pipeline's frozen holdout, unless one is frozen already (a concurrent first run may
    have won); the record that holds."""
    digest = holdout_hash(spec, holdout)
    path = lake.root / "holdouts" / spec.name / f"{digest}.parquet"
    pointer = _pointer(lake, spec.name)
    if not pointer.exists():
        write_parquet(path, holdout)
        record = {"holdout_hash": digest, "rows": len(holdout), "cut_from": cut_from,
                  "strategy": spec.split.strategy, "file": lake.relative(path),
                  "frozen_at": datetime.now(UTC).isoformat()}
        create_exclusive(pointer, canonical_json(record))
    return read_json(pointer)


def lineage(record: dict[str, Any]) -> list[str]:
    """The hashes of a frozen holdout's record, oldest first: every holdout erasures replaced, then the current
    one. Each held every row of the next."""
    replaced = record.get("replaced") or ([record["supersedes"]] if record.get("supersedes") else [])
    return [*replaced, record["holdout_hash"]]


def training_rows(spec: PipelineSpec, dataset: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    """The dataset without any entity that is in the holdout."""
    keep = ~dataset[spec.key].isin(holdout[spec.key])
    return dataset[keep].reset_index(drop=True)


def erase(lake: Lake, spec: PipelineSpec, values: set[str], erasure_id: str) -> dict[str, Any] | None:
    """The frozen holdout without an erased subject's rows (key reading as one of `values`: pseudonyms, or the
    clear key of a `pii: keep` key): a new file named by its new hash, the record pointing at it (`supersedes`:
    the old hash), the old file deleted. None when the subject is not in it."""
    from crispflow.governance.rewrite import rows_of
    from crispflow.lake import write_json

    record = frozen_record(lake, spec.name)
    if (before := record.get("supersedes")) and (stale := lake.root / "holdouts" / spec.name /
                                                  f"{before}.parquet").exists():
        remove(stale)  # an earlier erasure stopped between moving the record and deleting the old file
    old_path = lake.root / record["file"]
    holdout = read_parquet(old_path)
    kept = holdout[~rows_of(holdout[spec.key], values)]
    if len(kept) == len(holdout):
        return None
    digest = holdout_hash(spec, kept)
    path = lake.root / "holdouts" / spec.name / f"{digest}.parquet"
    write_parquet(path, kept)
    new = {**record, "holdout_hash": digest, "rows": len(kept), "file": lake.relative(path),
           "supersedes": record["holdout_hash"], "replaced": lineage(record), "erasure": erasure_id}
    write_json(_pointer(lake, spec.name), new)
    remove(old_path)
    return {"store": "holdout", "path": record["file"], "old": record["holdout_hash"], "new": digest,
            "rows": len(holdout) - len(kept)}
