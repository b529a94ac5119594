"""Batch scoring at scale: plan row-range partitions of a dataset version, score each on its own, commit once.

Layout under the lake root (one folder per dataset version and model version, so outputs never mix):
    scores/<pipeline>/<dataset_version_id>/v<model_version>/_plan.json        the partitions (first plan wins)
    scores/<pipeline>/<dataset_version_id>/v<model_version>/part-<index>.parquet   key, _row, the task's columns
    scores/<pipeline>/<dataset_version_id>/v<model_version>/_SUCCESS          the manifest: written last

The columns follow the version's task (tag `crispflow.task`; untagged versions are binary), see `output_columns`:
- binary: `score` (P(positive)) and `prediction` (score >= the version's `crispflow.threshold`);
- regression: `prediction` and its conformal interval `interval_low`, `interval_high` (prediction -/+ the
  halfwidth of the version's `crispflow.interval` tag, at its coverage; null for a version without the tag,
  as the model server serves it);
- multiclass: `prediction` (the predicted class label, as text) and `proba.<class>` per class (class order of the
  version's `crispflow.classes` tag).

- `plan_partitions` reads only the Parquet footer: partitions are contiguous row ranges aligned to row groups
  (a row group larger than a partition is split into even offset ranges). The plan is created exclusively, so
  reruns and concurrent runs with another `partition_rows` still agree on one set of files.
- `score_partition` reads only its row range (`ParquetFile.iter_batches` over the overlapping row groups and
  only the columns the model needs), scores it in cache-sized chunks, and creates `part-<index>.parquet`
  exclusively: a rerun or a concurrent duplicate finds the file and checks it instead of writing a second one.
  The model is loaded lazily, so an already-scored partition costs a footer read.
- `commit` checks every part against the plan (rows in == rows scored, range by range) and creates `_SUCCESS`
  (a JSON manifest with lineage) exclusively: exactly one run commits a given output.

No Airflow here; the Airflow tasks are in plugins/crispflow_airflow/operators/scoring.py.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from crispflow.data.datasets import read_manifest
from crispflow.errors import CrispflowError, LakeError
from crispflow.lake import Lake, PathLike, canonical_json, create_exclusive, read_json
from crispflow.model.registry import INTERVAL_TAG, THRESHOLD_TAG, VersionTask, task_of
from crispflow.native_threads import thread_limit

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from crispflow.spec import PipelineSpec

DEFAULT_PARTITION_ROWS = 1_000_000  # tasks of seconds: per-task costs (fork, registry call, footer read) amortise
DEFAULT_CHUNK_ROWS = 32_768  # rows per predict_proba call: temporaries stay cache-sized (see benchmarks/)
MIN_PARTITION_ROWS = 1_000
PLAN = "_plan.json"
SUCCESS = "_SUCCESS"
ROW = "_row"
SCORE = "score"
PREDICTION = "prediction"
INTERVAL_LOW, INTERVAL_HIGH = "interval_low", "interval_high"
PROBA_PREFIX = "proba."
_META = b"crispflow.partition"


class ScoringError(CrispflowError):
    """Scoring cannot go on: bad request, a plan or part that does not match, a model without a threshold."""


@dataclass(frozen=True)
class ModelRef:
    """A registry model version pinned for one scoring run (an alias may move while the run is going).

    `threshold`: binary only; `classes`: multiclass only; `interval`: regression only, the version's
    `crispflow.interval` tag ({"coverage", "halfwidth", "method"}).
    """

    name: str
    version: str
    alias: str
    artifact_sha256: str
    run_id: str
    threshold: float | None
    task: str = "binary"
    classes: tuple[str, ...] = ()
    interval: dict[str, Any] | None = field(default=None, hash=False, compare=True)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        if self.task == "binary":  # a binary pin is what it was before tasks existed (same plans, same bytes)
            for name in ("task", "classes", "interval"):
                data.pop(name)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRef:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["classes"] = tuple(values.get("classes") or ())
        return cls(**values)

    @property
    def task_view(self) -> VersionTask:
        return VersionTask(self.task, self.classes)


def output_columns(key: str, model: ModelRef) -> list[str]:
    """The columns of a scored part, in order (see the module docstring)."""
    if model.task == "regression":
        return [key, ROW, PREDICTION, INTERVAL_LOW, INTERVAL_HIGH]
    if model.task == "multiclass":
        return [key, ROW, PREDICTION, *(PROBA_PREFIX + c for c in model.classes)]
    return [key, ROW, SCORE, PREDICTION]


# --- where things are ------------------------------------------------------------------------------------


def scores_dir(lake: Lake, pipeline: str, dataset_version_id: str, model_version: str) -> PathLike:
    return lake.root / "scores" / pipeline / dataset_version_id / f"v{model_version}"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def newest_version(lake: Lake, pipeline: str) -> str:
    """The newest published dataset version of a pipeline (see `crispflow.data.datasets.latest_version`)."""
    from crispflow.data.datasets import latest_version

    try:
        return latest_version(lake, pipeline)["dataset_version_id"]
    except LakeError as exc:
        raise ScoringError(f"dataset_version_id: {exc}") from exc


def resolve_model(mlf: MlflowClient, pipeline: str, alias: str) -> ModelRef:
    """Pin the complete version an alias points at now: its artifact hash and task, and what its outputs need
    (binary: the decision threshold; multiclass: the classes; regression: the conformal interval)."""
    from crispflow.model import registry

    name = registry.model_name(pipeline)
    mv = registry.alias_version(mlf, name, alias)
    if mv is None:
        raise ScoringError(f"alias: model {name!r} has no alias {alias!r}")
    sha = mv.tags.get(registry.SHA_TAG)
    if not sha:
        raise ScoringError(f"alias: {name} v{mv.version} ({alias}) has no recorded artifact hash: not scoring with it")
    try:
        task = task_of(mv.tags)
    except ScoringError as exc:
        raise ScoringError(f"alias: {name} v{mv.version}: {exc}") from None
    threshold = interval = None
    if task.task == "binary":
        raw = mv.tags.get(THRESHOLD_TAG)
        try:
            threshold = float(raw)
        except (TypeError, ValueError):
            raise ScoringError(f"alias: {name} v{mv.version} has no valid {THRESHOLD_TAG} tag ({raw!r})") from None
    if task.task == "regression" and mv.tags.get(INTERVAL_TAG) is not None:
        interval = _interval(mv.tags[INTERVAL_TAG], f"alias: {name} v{mv.version}")
    return ModelRef(name, str(mv.version), alias, sha, str(mv.run_id), threshold, task.task, task.class_labels,
                    interval)


def _interval(raw: str | None, where: str) -> dict[str, Any]:
    """The `crispflow.interval` tag, checked: a finite halfwidth >= 0 and a coverage in (0, 1)."""
    try:
        data = json.loads(raw or "null")
        halfwidth, coverage = float(data["halfwidth"]), float(data["coverage"])
    except (ValueError, TypeError, KeyError):
        raise ScoringError(f"{where}: {INTERVAL_TAG}: {raw!r} is not a JSON object with coverage and "
                           "halfwidth") from None
    if not (math.isfinite(halfwidth) and halfwidth >= 0 and 0 < coverage < 1):
        raise ScoringError(f"{where}: {INTERVAL_TAG}: halfwidth {halfwidth} must be finite >= 0 and coverage "
                           f"{coverage} in (0, 1)")
    return {**data, "halfwidth": halfwidth, "coverage": coverage}


def load_model(mlf: MlflowClient, model: ModelRef, trusted: Sequence[str] = ()) -> Any:
    """The pinned version from the registry, loaded only after its files match the recorded hash (one registry
    call: with an authenticated MLflow server each one costs the server a password hash). `trusted`: module
    prefixes its file may hold classes of besides sklearn's (the spec's `training.allowed_estimators`)."""
    from crispflow.model import registry

    mv = mlf.get_model_version(model.name, model.version)
    if mv.tags.get(registry.SHA_TAG) != model.artifact_sha256:
        raise registry.RegistryError(f"{model.name} v{model.version}: recorded artifact hash changed since the "
                                     f"run was planned: refusing to load it")
    return registry.load_files(registry.verified_copy(mv, trusted=trusted), trusted=trusted)


# --- Parquet access with bounded memory -------------------------------------------------------------------


def _open(path: PathLike) -> Any:
    """A seekable binary handle: pyarrow then fetches only the footer and the byte ranges it needs."""
    return path.open("rb")  # type: ignore[attr-defined]


def _parquet(path: PathLike) -> tuple[pq.ParquetFile, Any]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise LakeError(f"{path}: no such file")
    handle = _open(path)
    try:
        return pq.ParquetFile(handle), handle
    except Exception as exc:
        handle.close()
        raise LakeError(f"{path}: not a readable Parquet file ({exc})") from exc


def _row_group_offsets(pf: pq.ParquetFile) -> list[tuple[int, int]]:
    """(first row, rows) of each row group."""
    out, start = [], 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        out.append((start, n))
        start += n
    return out


def split_ranges(row_groups: list[tuple[int, int]], partition_rows: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of at most `partition_rows` rows, aligned to row groups: consecutive
    small groups are packed together, a group larger than a partition is split into even pieces."""
    ranges: list[tuple[int, int]] = []
    open_start: int | None = None
    open_stop = 0
    for start, n in row_groups:
        if n == 0:
            continue
        if n > partition_rows:
            if open_start is not None:
                ranges.append((open_start, open_stop))
                open_start = None
            pieces = math.ceil(n / partition_rows)
            bounds = [start + (n * k) // pieces for k in range(pieces + 1)]
            ranges.extend(pairwise(bounds))
            continue
        if open_start is not None and open_stop - open_start + n > partition_rows:
            ranges.append((open_start, open_stop))
            open_start = None
        if open_start is None:
            open_start = start
        open_stop = start + n
    if open_start is not None:
        ranges.append((open_start, open_stop))
    return ranges


def read_range(pf: pq.ParquetFile, start: int, stop: int, columns: list[str],
               chunk_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, batch) for rows [start, stop) in batches of at most `chunk_rows`, reading only the row groups
    that overlap the range and only `columns`."""
    groups = [(i, s, n) for i, (s, n) in enumerate(_row_group_offsets(pf)) if s < stop and s + n > start]
    if not groups:
        return
    pos = groups[0][1]
    for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[g[0] for g in groups], columns=columns,
                                 use_threads=False):
        lo, hi = max(start - pos, 0), min(stop - pos, batch.num_rows)
        if hi > lo:
            yield pos + lo, batch.slice(lo, hi - lo)
        pos += batch.num_rows
        if pos >= stop:
            break


# --- plan ---------------------------------------------------------------------------------------------------


def plan_partitions(lake: Lake, spec: PipelineSpec, dataset_version_id: str, model: ModelRef,
                    partition_rows: int = DEFAULT_PARTITION_ROWS) -> dict[str, Any]:
    """The partitions of a dataset version for one model version, from the Parquet footer only.

    The first plan for an output folder is stored (created exclusively) and every later call returns it, so
    reruns and concurrent runs write the same files even if they ask for another `partition_rows`.
    Returns {"plan": <the stored plan>, "created": bool}.
    """
    if not isinstance(partition_rows, int) or partition_rows < MIN_PARTITION_ROWS:
        raise ScoringError(f"partition_rows: must be a whole number >= {MIN_PARTITION_ROWS}, got {partition_rows!r}")
    if spec.task != model.task:
        raise ScoringError(f"model: {model.name} v{model.version} is a {model.task} model, the spec of "
                           f"{spec.name!r} says task {spec.task!r}: not scoring with it")
    out = scores_dir(lake, spec.name, dataset_version_id, model.version)
    if (out / PLAN).exists():
        return {"plan": _checked_plan(read_json(out / PLAN), spec.name, dataset_version_id, model), "created": False}
    manifest = read_manifest(lake, dataset_version_id, spec.name)
    data = lake.root / manifest["files"]["data"]
    pf, handle = _parquet(data)
    with handle:
        rows = pf.metadata.num_rows
        names = set(pf.schema_arrow.names)
        ranges = split_ranges(_row_group_offsets(pf), partition_rows)
        row_groups = pf.metadata.num_row_groups
    if rows != manifest["rows"]["published"]:
        raise LakeError(f"dataset version {dataset_version_id}: data file has {rows} rows, its manifest says "
                        f"{manifest['rows']['published']}")
    missing = [c for c in [spec.key, *spec.feature_columns] if c not in names]
    if missing:
        raise ScoringError(f"dataset version {dataset_version_id}: no column(s) {missing} to score")
    plan = {
        "pipeline": spec.name, "dataset_version_id": dataset_version_id, "content_sha256": manifest["content_sha256"],
        "key": spec.key,
        "data": manifest["files"]["data"], "rows": rows, "row_groups": row_groups, "partition_rows": partition_rows,
        "model": model.to_json(), "output": lake.relative(out),
        "partitions": [{"index": i, "start": s, "stop": e} for i, (s, e) in enumerate(ranges)],
    }
    created = create_exclusive(out / PLAN, canonical_json(plan))
    if not created:  # another run planned first: theirs is the plan
        plan = _checked_plan(read_json(out / PLAN), spec.name, dataset_version_id, model)
    return {"plan": plan, "created": created}


def _checked_plan(plan: dict[str, Any], pipeline: str, dataset_version_id: str, model: ModelRef) -> dict[str, Any]:
    stored = ModelRef.from_json(plan["model"])
    if (plan["pipeline"], plan["dataset_version_id"]) != (pipeline, dataset_version_id) or (
            stored.name, stored.version, stored.artifact_sha256) != (model.name, model.version, model.artifact_sha256):
        raise ScoringError(f"{plan['output']}/{PLAN} was planned for another dataset or model "
                           f"({plan['dataset_version_id']}, {stored.name} v{stored.version}): refusing to mix outputs")
    return plan


def read_plan(lake: Lake, output: str) -> dict[str, Any]:
    path = lake.root / output / PLAN
    if not path.exists():
        raise ScoringError(f"{output}: no {PLAN} (plan the run first)")
    return read_json(path)


# --- score --------------------------------------------------------------------------------------------------


def _part_info(path: PathLike) -> dict[str, Any]:
    """What a part file says about itself (footer only): rows and the partition it was written for."""
    pf, handle = _parquet(path)
    with handle:
        meta = (pf.schema_arrow.metadata or {}).get(_META)
        return {"rows": pf.metadata.num_rows, "meta": json.loads(meta) if meta else None}


def _check_part(path: PathLike, expected: dict[str, Any]) -> int:
    info = _part_info(path)
    rows = expected["stop"] - expected["start"]
    if info["meta"] != expected or info["rows"] != rows:
        raise ScoringError(f"{path.name}: holds {info['rows']} rows for {info['meta']}, expected {rows} rows for "
                           f"{expected}: remove the output folder to rescore")
    return rows


def score_partition(lake: Lake, spec: PipelineSpec, plan: dict[str, Any], partition: dict[str, Any],
                    get_model: Callable[[], Any], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
    """Score rows [start, stop) of the planned dataset and create `part-<index>.parquet` once.

    `get_model` is called only when the part is not there yet. Returns a small dict for XCom:
    {"index", "rows", "file", "created"}.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = partition.get("index")
    planned = next((p for p in plan["partitions"] if p["index"] == index), None)
    if planned is None or planned != {k: partition.get(k) for k in ("index", "start", "stop")}:
        raise ScoringError(f"partition: {partition!r} is not in the plan of {plan['output']}")
    if chunk_rows < 1:
        raise ScoringError(f"chunk_rows: must be >= 1, got {chunk_rows}")
    model_ref = ModelRef.from_json(plan["model"])
    expected = {**planned, "dataset_version_id": plan["dataset_version_id"], "model_version": model_ref.version}
    target = lake.root / plan["output"] / part_name(planned["index"])
    if target.exists():
        return {"index": index, "rows": _check_part(target, expected), "file": lake.relative(target), "created": False}

    from crispflow.model.tasks import output_from_response

    model = get_model()
    scorer = batch_scorer(model_ref, model)
    columns = [spec.key, *spec.feature_columns]
    keys: list[Any] = []
    rows: list[Any] = []
    outputs: list[Any] = []
    pf, handle = _parquet(lake.root / plan["data"])
    with handle, thread_limit("CRISPFLOW_SCORE_THREADS", ScoringError):
        for first, batch in read_range(pf, planned["start"], planned["stop"], columns, chunk_rows):
            response = None if scorer is None else scorer.response_arrow(batch)
            output = _output(model_ref, model, batch.to_pandas()[spec.feature_columns]) if response is None else \
                output_from_response(model_ref.task, model, response, len(model_ref.classes))
            bad = int((~np.isfinite(output).reshape(len(output), -1).all(axis=1)).sum())
            if bad:
                raise ScoringError(f"partition {index}: {bad} rows from row {first} got no finite score")
            keys.append(batch.column(spec.key))
            rows.append(np.arange(first, first + batch.num_rows, dtype="int64"))
            outputs.append(output)
    n = sum(len(s) for s in outputs)
    if n != planned["stop"] - planned["start"]:
        raise ScoringError(f"partition {index}: read {n} rows, planned {planned['stop'] - planned['start']}")
    width = (len(model_ref.classes),) if model_ref.task == "multiclass" else ()
    output_all = np.concatenate(outputs) if outputs else np.empty((0, *width), dtype="float64")
    key_type = pf.schema_arrow.field(spec.key).type
    table = pa.table({
        spec.key: pa.concat_arrays(keys) if keys else pa.array([], type=key_type),
        ROW: np.concatenate(rows) if rows else np.empty(0, dtype="int64"),
        **_task_columns(model_ref, output_all),
    }).replace_schema_metadata({_META: canonical_json(expected)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    created = create_exclusive(target, buf.getvalue())
    if not created:  # a concurrent duplicate won: its file must be the same partition
        _check_part(target, expected)
    return {"index": index, "rows": n, "file": lake.relative(target), "created": created}


def batch_scorer(model_ref: ModelRef, model: Any) -> Any:
    """The model's compiled scorer (`crispflow.model.compiled`), verified against the model itself to 1e-9 on
    synthetic rows (missing values, every known and an unseen category, extremes); None when the model has no
    compiled form or it disagrees: then the model scores (logged either way)."""
    from crispflow.model.compiled import ScorerMismatch, UnsupportedModel, verified_scorer

    try:
        scorer, gap = verified_scorer(model, model_ref.task)
    except (UnsupportedModel, ScorerMismatch) as exc:
        log.info("%s v%s: scored by its pipeline (%s)", model_ref.name, model_ref.version, exc)
        return None
    log.info("%s v%s: scored by its compiled scorer (verified, max difference %.2g)", model_ref.name,
             model_ref.version, gap)
    return scorer


def _output(model_ref: ModelRef, model: Any, x: Any) -> Any:
    """The model's output for `x` in the task's convention (`crispflow.model.tasks.model_output`)."""
    import numpy as np

    if model_ref.task == "binary":  # the same call as training and serving (bit-identical scores)
        from crispflow.model.training import positive_proba

        return np.asarray(positive_proba(model, x), dtype="float64")
    from crispflow.model.tasks import model_output

    return model_output(model_ref.task_view, model, x)  # duck-typed: task and class_labels, as a spec has


def _task_columns(model_ref: ModelRef, output: Any) -> dict[str, Any]:
    """The task's output columns of a part (see the module docstring), in `output_columns` order."""
    import numpy as np
    import pyarrow as pa

    if model_ref.task == "binary":
        return {SCORE: output, PREDICTION: output >= model_ref.threshold}
    if model_ref.task == "regression":
        if model_ref.interval is None:
            empty = pa.nulls(len(output), type=pa.float64())
            return {PREDICTION: output, INTERVAL_LOW: empty, INTERVAL_HIGH: empty}
        half = float(model_ref.interval["halfwidth"])
        return {PREDICTION: output, INTERVAL_LOW: output - half, INTERVAL_HIGH: output + half}
    labels = np.array(model_ref.classes, dtype=object)
    predicted = labels[np.argmax(output, axis=1)] if len(output) else labels[:0]
    return {PREDICTION: pa.array(predicted.tolist(), type=pa.string()),
            **{PROBA_PREFIX + c: output[:, i] for i, c in enumerate(model_ref.classes)}}


# --- commit -------------------------------------------------------------------------------------------------


def commit(lake: Lake, output: str, run: dict[str, Any],
           reported: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Check every planned part (rows in == rows scored, per range and in total) and create `_SUCCESS` once.

    `reported` (the mapped tasks' results) is cross-checked when given. Returns {"manifest", "created"}: created is
    False when this output was committed before (by this or another run).
    """
    plan = read_plan(lake, output)
    out = lake.root / output
    if (out / SUCCESS).exists():
        return {"manifest": read_json(out / SUCCESS), "created": False}
    model = ModelRef.from_json(plan["model"])
    parts = []
    for p in plan["partitions"]:
        path = out / part_name(p["index"])
        if not path.exists():
            raise ScoringError(f"{output}: partition {p['index']} ({part_name(p['index'])}) was not scored")
        expected = {**p, "dataset_version_id": plan["dataset_version_id"], "model_version": model.version}
        parts.append({**p, "rows": _check_part(path, expected), "file": lake.relative(path)})
    scored = sum(p["rows"] for p in parts)
    if scored != plan["rows"]:
        raise ScoringError(f"{output}: rows in ({plan['rows']}) != rows scored ({scored})")
    if reported is not None:
        got = sorted((int(r["index"]), int(r["rows"])) for r in reported)
        want = [(p["index"], p["rows"]) for p in parts]
        if got != want:
            raise ScoringError(f"{output}: the scoring tasks reported {got}, the files hold {want}")
    manifest = {
        "pipeline": plan["pipeline"], "dataset_version_id": plan["dataset_version_id"],
        "dataset_content_sha256": plan["content_sha256"], "data": plan["data"],
        "model": model.to_json(), "rows": {"in": plan["rows"], "scored": scored},
        "partitions": parts, "partition_rows": plan["partition_rows"],
        "columns": output_columns(plan["key"], model),
        "committed_by": {**run, "at": datetime.now(UTC).isoformat()},
    }
    if not create_exclusive(out / SUCCESS, canonical_json(manifest)):
        return {"manifest": read_json(out / SUCCESS), "created": False}
    return {"manifest": manifest, "created": True}


def read_scores(lake: Lake, output: str) -> Any:
    """All committed predictions of an output folder as one frame (small outputs and tests; read parts otherwise)."""
    import pandas as pd

    out = lake.root / output
    if not (out / SUCCESS).exists():
        raise ScoringError(f"{output}: not committed (no {SUCCESS})")
    manifest = read_json(out / SUCCESS)
    frames = []
    for p in manifest["partitions"]:
        pf, handle = _parquet(lake.root / p["file"])
        with handle:
            frames.append(pf.read().to_pandas())
    return pd.concat(frames, ignore_index=True)
