"""batch_score through Airflow (`dag.test()`) against a real MLflow server, on a dataset published by ingest_validate.

Runs under its own pipeline name (`score_demo`, a copy of the demo spec) so the aliases it sets never touch the
models other integration tests train.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from crispflow.data.datasets import load_version
from crispflow.lake import Lake, canonical_json, create_exclusive, frame_digest, read_json, write_atomic
from crispflow.model import registry
from crispflow.model.features import build_preprocessor, features, labels
from crispflow.model.training import positive_proba
from crispflow.serving import batch_scoring as scoring
from crispflow.spec import load_spec

pytest_plugins = ["support.mlflow_server", "support.servers"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "score_demo"
MODEL = registry.model_name(PIPELINE)
QUARTER = {"pipeline": PIPELINE, "start": "2026-01-01", "end": "2026-04-01"}


@pytest.fixture(scope="module")
def env(mlflow_server, airflow_db, tmp_path_factory):
    """A clean lake, a `score_demo` spec and this session's MLflow server for every task run by dag.test()."""
    keys = ("MLFLOW_TRACKING_URI", "CRISPFLOW_LAKE_URL", "CRISPFLOW_PIPELINES_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    lake_dir = tmp_path_factory.mktemp("lake")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.url
    os.environ["CRISPFLOW_LAKE_URL"] = lake_dir.as_uri()
    pipelines = tmp_path_factory.mktemp("pipelines")
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    spec["name"] = PIPELINE
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec))
    os.environ["CRISPFLOW_PIPELINES_DIR"] = str(pipelines)
    mlflow.set_tracking_uri(mlflow_server.url)
    yield registry.client(mlflow_server.url), Lake(lake_dir)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors
    return bag.dags[dag_id]


def run(dag_id: str, conf: dict):
    dr = dag(dag_id).test(run_conf=conf)
    return dr, {(ti.task_id, ti.map_index): ti for ti in dr.get_task_instances()}


def register(mlf, version_id: str, lake: Lake, run_key: str, alias: str) -> registry.Registered:
    """A fitted model of the published rows, registered with hash and threshold, and pointed at by `alias`."""
    spec = load_spec(PIPELINE)
    frame = load_version(lake, version_id, PIPELINE)
    with threadpool_limits(limits=1):
        model = Pipeline([("preprocess", build_preprocessor(spec)),
                          ("model", LogisticRegression(max_iter=300))]).fit(features(spec, frame), labels(spec, frame))
    run_id = registry.find_or_create_run(mlf, PIPELINE, run_key, "train")
    reg = registry.register(mlf, name=MODEL, run_id=run_id, run_key=run_key, model=model,
                            example=features(spec, frame).head(20), tags={"crispflow.threshold": "0.2"})
    registry.set_alias(mlf, MODEL, alias, reg.version)
    return reg


@pytest.fixture(scope="module")
def published(env) -> tuple[str, registry.Registered]:
    mlf, lake = env
    dr, tis = run("ingest_validate", QUARTER)
    assert dr.state == "success", {k: ti.state for k, ti in tis.items()}
    version_id = tis[("publish", -1)].xcom_pull(task_ids="publish")["dataset_version_id"]
    return version_id, register(mlf, version_id, lake, "test/score/champion", "champion")


def score_events() -> list[tuple[str | None, str]]:
    """(partition key, source run id) of every batch-scores asset event, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(AssetEvent.partition_key, AssetEvent.source_run_id)
                               .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                               .where(AssetModel.name == "crispflow_batch_scores").order_by(AssetEvent.id)).all()
        return [tuple(r) for r in rows]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_every_row_is_scored_once_by_mapped_tasks_and_a_rerun_changes_nothing(env, published) -> None:
    mlf, lake = env
    version_id, reg = published
    events_before = score_events()
    dr, tis = run("batch_score", {"pipeline": PIPELINE, "partition_rows": 1_000})  # version: the newest
    assert dr.state == "success", {k: ti.state for k, ti in tis.items()}
    summary = tis[("plan", -1)].xcom_pull(task_ids="plan", key="plan")
    assert summary["dataset_version_id"] == version_id and summary["model_version"] == reg.version
    assert summary["artifact_sha256"] == reg.artifact_sha256
    mapped = sorted(k[1] for k in tis if k[0] == "score")
    assert mapped == list(range(summary["partitions"])) and len(mapped) >= 3  # one mapped task per partition

    committed = tis[("commit", -1)].xcom_pull(task_ids="commit")
    rows_in = read_json(lake.manifest(PIPELINE, version_id))["rows"]["published"]
    assert committed["rows_in"] == committed["rows"] == rows_in
    assert committed["created"] and committed["event_emitted"]
    assert score_events() == [*events_before, (f"{PIPELINE}/{version_id}.v{reg.version}", dr.run_id)]  # keyed
    out = Path(lake.root) / summary["output"]
    assert summary["output"] == f"scores/{PIPELINE}/{version_id}/v{reg.version}"
    manifest = read_json(out / scoring.SUCCESS)
    assert manifest["rows"] == {"in": rows_in, "scored": rows_in}
    assert manifest["model"]["version"] == reg.version and manifest["model"]["artifact_sha256"] == reg.artifact_sha256
    assert manifest["model"]["run_id"] == reg.run_id and manifest["committed_by"]["run_id"] == dr.run_id

    # The scores are the registered model's, row for row, under the dataset's keys.
    spec = load_spec(PIPELINE)
    frame = load_version(lake, version_id, PIPELINE)
    scored = scoring.read_scores(lake, summary["output"])
    assert scored[spec.key].tolist() == frame[spec.key].tolist() and scored[spec.key].is_unique
    with threadpool_limits(limits=1):
        expected = positive_proba(registry.load_verified(mlf, MODEL, reg.version), features(spec, frame))
    np.testing.assert_allclose(scored[scoring.SCORE].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    assert (scored[scoring.PREDICTION] == (scored[scoring.SCORE] >= 0.2)).all()

    # The same request again (even with another partition size): same files, same bytes, no second event.
    before = files(out)
    dr2, tis2 = run("batch_score", {"pipeline": PIPELINE, "dataset_version_id": version_id, "partition_rows": 5_000})
    assert dr2.state == "success", {k: ti.state for k, ti in tis2.items()}
    again = tis2[("commit", -1)].xcom_pull(task_ids="commit")
    assert not again["created"] and not again["event_emitted"] and again["rows"] == rows_in
    assert not any(ti.xcom_pull(task_ids="score", map_indexes=k[1])["created"] for k, ti in tis2.items()
                   if k[0] == "score")
    assert files(out) == before
    assert len(score_events()) == len(events_before) + 1


def test_a_tampered_model_is_refused_and_nothing_is_written(env, published, mlflow_server) -> None:
    mlf, lake = env
    version_id, _ = published
    reg = register(mlf, version_id, lake, "test/score/tampered", "tampered")
    source = mlf.get_model_version(MODEL, reg.version).source.rsplit("/", 1)[-1]
    (target,) = [p for p in mlflow_server.artifacts.rglob("model.skops") if source in p.parts]
    target.write_bytes(target.read_bytes() + b"\0")
    dr, tis = run("batch_score", {"pipeline": PIPELINE, "alias": "tampered", "partition_rows": 1_000})
    assert dr.state == "failed"
    states = {k: ti.state for k, ti in tis.items()}
    assert states[("plan", -1)] == "success"
    assert {s for k, s in states.items() if k[0] == "score"} == {"failed"}  # no retries: ModelRefused
    assert all(tis[k].try_number == 1 for k in tis if k[0] == "score")
    assert states[("commit", -1)] != "success"
    out = scoring.scores_dir(lake, PIPELINE, version_id, reg.version)
    assert sorted(p.name for p in out.iterdir()) == [scoring.PLAN]  # a plan, no part, no _SUCCESS


def test_bad_requests_are_rejected(env, published) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag("batch_score").test(run_conf={"pipeline": PIPELINE, "partition_rows": 10})
    for conf in ({"pipeline": PIPELINE, "alias": "nobody"}, {"pipeline": PIPELINE, "typo": 1},
                 {"pipeline": PIPELINE, "dataset_version_id": "ds-0123456789abcdef"}):
        dr, tis = run("batch_score", conf)
        assert dr.state == "failed" and tis[("plan", -1)].state == "failed", conf


def test_plan_score_and_commit_on_s3_through_object_storage_paths(moto_s3, monkeypatch) -> None:
    """The lake on S3 (moto) as the prod-local profile has it: range reads, exclusive creates, no temp keys left."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk import ObjectStoragePath

    monkeypatch.setenv("AIRFLOW_CONN_CRISPFLOW_SCORING_S3", moto_s3.aws_conn())
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(ROOT / "include" / "pipelines"))
    bucket = f"scoring-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=bucket)
    lake = Lake(ObjectStoragePath(f"s3://{bucket}/lake", conn_id="crispflow_scoring_s3"))
    spec = load_spec("lending_club")
    frame = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet").head(5_000)
    digest = frame_digest(frame)
    version_id = "ds-" + digest[:16]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, row_group_size=1_000)
    folder = lake.version_dir("lending_club", version_id)
    write_atomic(folder / "data.parquet", buf.getvalue())
    create_exclusive(lake.manifest("lending_club", version_id), canonical_json({
        "dataset_version_id": version_id, "content_sha256": digest, "pipeline": "lending_club",
        "rows": {"published": len(frame)}, "files": {"data": lake.relative(folder / "data.parquet")},
        "interval": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-10-01T00:00:00+00:00"},
        "published_by": {"dag_id": "test", "run_id": "s3", "at": "2026-11-01T00:00:00+00:00"}}))
    with threadpool_limits(limits=1):
        model = Pipeline([("preprocess", build_preprocessor(spec)),
                          ("model", LogisticRegression(max_iter=300))]).fit(features(spec, frame), labels(spec, frame))
    ref = scoring.ModelRef("crispflow-lending_club", "1", "champion", "c" * 64, "run", 0.2)
    assert scoring.newest_version(lake, "lending_club") == version_id
    plan = scoring.plan_partitions(lake, spec, version_id, ref, partition_rows=2_000)["plan"]
    assert [(p["start"], p["stop"]) for p in plan["partitions"]] == [(0, 2000), (2000, 4000), (4000, 5000)]
    results = [scoring.score_partition(lake, spec, plan, p, lambda: model) for p in plan["partitions"]]
    assert scoring.commit(lake, plan["output"], {"dag_id": "test", "run_id": "s3"}, results)["created"]
    again = [scoring.score_partition(lake, spec, plan, p, lambda: None) for p in plan["partitions"]]
    assert not any(r["created"] for r in again)
    assert not scoring.commit(lake, plan["output"], {"dag_id": "test", "run_id": "s3-again"}, again)["created"]
    scored = scoring.read_scores(lake, plan["output"])
    assert scored[spec.key].tolist() == frame[spec.key].tolist()
    pages = moto_s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"lake/{plan['output']}")
    stored = sorted(o["Key"].rsplit("/", 1)[-1] for page in pages for o in page.get("Contents", []))
    assert stored == sorted([scoring.PLAN, scoring.SUCCESS, *(scoring.part_name(i) for i in range(3))])
