"""The prediction log on S3 (a real moto server): written by the model server's writer, read back with plain
storage options, with options from the environment, and through an Airflow ObjectStoragePath as a DAG does."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.servers import MotoS3

from crispflow.predictions.reader import read_feedback, read_predictions
from crispflow.predictions.store import storage_options_from_env
from crispflow.predictions.writer import PredictionLog

pytest_plugins = ["support.servers"]
pytestmark = pytest.mark.slow  # talks to a moto server started for the session

T0 = datetime(2026, 4, 2, 23, 50, tzinfo=UTC)
MODEL = "credit-risk"
CONN_ID = "crispflow_predlog_s3"


def prediction(i: int) -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "ts": T0 + timedelta(seconds=6 * i),  # 200 rows cross midnight: two days, two hours
        "model": MODEL,
        "version": "2" if i % 10 else "3",
        "alias": "champion" if i % 10 else "canary",
        "served": True,
        "entity": f"cust-{i % 13}",
        "score": (i % 100) / 100,
        "latency_ms": 2.0 + i % 5,
        "status": "ok",
        "features": {"int_rate": 0.05 + (i % 20) / 100, "grade": "ABCDEFG"[i % 7]},
    }


def options(s3: MotoS3) -> dict[str, Any]:
    return {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": s3.endpoint_url, "region_name": s3.region},
    }


def new_bucket(s3: MotoS3, create: bool = True) -> str:
    bucket = f"predlog-{uuid.uuid4().hex[:12]}"
    if create:
        s3.client().create_bucket(Bucket=bucket)
    return bucket


def keys(s3: MotoS3, bucket: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_write_and_read_back_on_s3(moto_s3: MotoS3) -> None:
    bucket = new_bucket(moto_s3)
    root = f"s3://{bucket}/serving"
    plog = PredictionLog(root, MODEL, batch_rows=64, flush_interval=0.05, storage_options=options(moto_s3))
    plog.start()
    for i in range(0, 200, 8):
        plog.log([prediction(k) for k in range(i, i + 8)])
    plog.log_feedback([{"request_id": "req-5", "label": 1, "ts": T0 + timedelta(hours=2)}])
    plog.close()
    assert (plog.written, plog.feedback_written, plog.dropped, plog.write_errors) == (200, 1, 0, 0)

    stored = keys(moto_s3, bucket)
    parts = [k for k in stored if k.endswith(".parquet")]
    assert parts and all("/part-" in k for k in parts)
    # each predictions part has its entity index beside it (feedback parts hold no entity)
    assert sorted(k for k in stored if k not in parts) == sorted(
        f"{k}.bloom" for k in parts if "/predictions/" in k)
    assert {k.split("/part-")[0] for k in stored} == {
        "serving/credit-risk/predictions/date=2026-04-02/hour=23",
        "serving/credit-risk/predictions/date=2026-04-03/hour=00",
        "serving/credit-risk/feedback/date=2026-04-03/hour=01",
    }
    df = read_predictions(root, MODEL, T0, T0 + timedelta(hours=1), storage_options=options(moto_s3))
    assert df["request_id"].tolist() == [f"req-{i}" for i in range(200)]
    assert df["feature.int_rate"].tolist() == [prediction(i)["features"]["int_rate"] for i in range(200)]
    assert df.loc[df["label"].notna(), "request_id"].tolist() == ["req-5"]
    # Only the first hour: the partition after midnight is not needed.
    first = read_predictions(root, MODEL, T0, T0 + timedelta(minutes=10), storage_options=options(moto_s3))
    assert first["request_id"].tolist() == [f"req-{i}" for i in range(100)]


def test_options_from_the_environment(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(moto_s3)
    root = f"s3://{bucket}/p"
    env = {
        "AWS_ENDPOINT_URL": moto_s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": moto_s3.region,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    opts = storage_options_from_env(root)
    assert opts is not None
    with_env = PredictionLog(root, MODEL, storage_options=opts)
    with_env.log([prediction(i) for i in range(10)])
    with_env.close()
    assert len(read_predictions(root, MODEL, T0, T0 + timedelta(hours=1), storage_options=opts)) == 10


def test_a_missing_bucket_is_retried_until_it_exists(moto_s3: MotoS3) -> None:
    bucket = new_bucket(moto_s3, create=False)  # the store is "down": every PUT fails
    root = f"s3://{bucket}/p"
    plog = PredictionLog(root, MODEL, flush_interval=0.02, retry_initial=0.05, storage_options=options(moto_s3))
    plog.start()
    plog.log([prediction(i) for i in range(50)])
    deadline = time.monotonic() + 30
    while plog.write_errors < 2:
        assert time.monotonic() < deadline, "the writer never tried"
        time.sleep(0.02)
    assert plog.written == 0 and plog.pending == 50
    moto_s3.client().create_bucket(Bucket=bucket)
    plog.close(timeout=30)
    assert (plog.written, plog.dropped, plog.pending) == (50, 0, 0)
    df = read_predictions(root, MODEL, T0, T0 + timedelta(hours=1), storage_options=options(moto_s3))
    assert df["request_id"].tolist() == [f"req-{i}" for i in range(50)]


def test_an_airflow_object_storage_path_root(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary-analysis DAG passes ObjectStoragePath roots (with a conn id) to the readers."""
    from airflow.sdk import ObjectStoragePath

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_s3.aws_conn())
    bucket = new_bucket(moto_s3)
    writer = PredictionLog(f"s3://{bucket}/lake/predictions", MODEL, storage_options=options(moto_s3))
    writer.log([prediction(i) for i in range(30)])
    writer.log_feedback([{"request_id": "req-1", "label": 0, "ts": T0 + timedelta(minutes=30)}])
    writer.close()

    root = ObjectStoragePath(f"s3://{bucket}/lake/predictions", conn_id=CONN_ID)
    df = read_predictions(root, MODEL, T0, T0 + timedelta(minutes=10))
    assert df["request_id"].tolist() == [f"req-{i}" for i in range(30)]
    assert df.set_index("request_id").loc["req-1", "label"] == 0
    fb = read_feedback(root, MODEL, T0, T0 + timedelta(hours=1))
    assert fb["request_id"].tolist() == ["req-1"]
    # and the writer accepts it too
    via_airflow = PredictionLog(root, "other-model")
    via_airflow.log([{**prediction(99), "model": "other-model"}])
    via_airflow.close()
    assert read_predictions(root, "other-model", T0, T0 + timedelta(hours=1))["request_id"].tolist() == ["req-99"]


def test_the_drift_gauges_on_s3_see_windows_and_episodes_written_after_their_first_read(moto_s3: MotoS3) -> None:
    """s3fs caches a listing for the life of the process: the model server's drift gauges once froze at the
    windows of their first read. Every read of the store lists afresh."""
    from prometheus_client import CollectorRegistry
    from upath import UPath

    from crispflow.monitoring.episodes import DriftPolicy, check, episode_record
    from crispflow.monitoring.gauges import DriftCollector
    from crispflow.monitoring.store import claim_episode, summarise, write_window

    bucket = new_bucket(moto_s3)
    root = UPath(f"s3://{bucket}/predictions", **options(moto_s3))
    # the monitoring DAG writes from another process: its own filesystem, which leaves the reader's cache as it was
    writer = UPath(f"s3://{bucket}/predictions", **options(moto_s3), skip_instance_cache=True)
    report = {"status": "drift", "drift": True, "drift_share": 0.5, "drifted_features": ["a"],
              "features": {"a": {"test": "ks", "statistic": 0.3, "p_adjusted": 1e-6, "psi": 0.4, "drifted": True},
                           "b": {"test": "ks", "statistic": 0.01, "p_adjusted": 0.9, "psi": 0.01, "drifted": False}},
              "prediction": None}

    def window(minute: int) -> None:
        end = T0 + timedelta(minutes=minute)
        write_window(writer, summarise(report, model=MODEL, alias="champion", version="1", start=end - timedelta(
            minutes=1), end=end, rows=500, labelled_rows=0, report_path="x"), report, "<html></html>")

    collector = DriftCollector(root, MODEL, ttl=0)
    registry = CollectorRegistry()
    registry.register(collector)
    window(1)
    assert len(collector.current()["champion"]) == 1
    window(2)
    assert len(collector.current()["champion"]) == 2, "the second window, written after the first listing"
    decision = check(root, MODEL, DriftPolicy(), T0 + timedelta(minutes=3))
    claim_episode(writer, MODEL, episode_record(decision, pipeline="p", fired_at=T0 + timedelta(minutes=3),
                                              fired_by={}))
    samples = {s.name: s for f in registry.collect() for s in f.samples}
    assert samples["crispflow_drift_episode_windows"].value == 2.0
    assert samples["crispflow_drift_episode_windows"].labels["dedup_key"] == f"{MODEL}.{decision.episode_id}"
