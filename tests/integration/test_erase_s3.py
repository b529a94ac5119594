"""An erasure on a lake and prediction log in an S3 bucket with object versioning (a real moto server), reached
as the DAGs reach it (Airflow's ObjectStoragePath with a connection). Versioning keeps every overwritten or
deleted object as history, so after `erase run` (even one that crashed and was run again) every version of every
object is read back: none may hold the subject but the suppression list's marker."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support.erasure_world import MODEL, REQUEST, build, holds_subject, subject
from support.keys import session_keys
from support.servers import MotoS3

import crispflow.erasure.run as erasure_run
from crispflow.erasure.run import run, verify
from crispflow.spec import load_spec

pytest_plugins = ["support.servers"]
pytestmark = pytest.mark.slow  # talks to a moto server started for the session

CONN_ID = "crispflow_erase_s3"


def versions_holding(s3: MotoS3, bucket: str, needles: list[str], key: str) -> tuple[list[str], int]:
    """(every object version of `bucket` holding the subject as "key@version", how many versions were read)."""
    client, found, read = s3.client(), [], 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            body = client.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["Body"]
            read += 1
            if holds_subject(version["Key"], body.read(), needles, key):
                found.append(f"{version['Key']}@{version['VersionId']}")
    return found, read


def test_no_object_version_holds_the_subject_after_a_crashed_and_rerun_erasure(
        moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import ObjectStoragePath

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_s3.aws_conn())
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=bucket)
    moto_s3.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    world = build(ObjectStoragePath(f"s3://{bucket}/", conn_id=CONN_ID), tmp_path)
    spec, keys, who = load_spec("lending_club"), session_keys(), subject(world.key)
    needles = keys.all_pseudonyms(world.key)
    before, _ = versions_holding(moto_s3, bucket, needles, world.key)
    assert any(k.startswith("lake/predictions/") for k in before) and any(k.startswith("lake/raw/") for k in before)

    def crash(path: object) -> int:
        raise RuntimeError("the worker died after the rewrites")

    monkeypatch.setattr(erasure_run, "forget_history", crash)
    with pytest.raises(RuntimeError, match="worker died"):
        run(world.lake, spec, who, keys, world.ledger, REQUEST, world.predictions, MODEL)
    crashed, _ = versions_holding(moto_s3, bucket, needles, world.key)
    assert crashed, "the crashed run left the subject in object history (what the rerun must remove)"

    monkeypatch.undo()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_s3.aws_conn())
    rerun = run(world.lake, spec, who, keys, world.ledger, REQUEST, world.predictions, MODEL)
    assert rerun.artifacts == []  # the crashed run rewrote everything: the rerun only forgets the history
    assert verify(world.lake, spec, who, keys, world.ledger, world.predictions, MODEL) == []
    after, read = versions_holding(moto_s3, bucket, needles, world.key)
    markers = [k for k in after if k.startswith(f"lake/governance/suppressed/{spec.name}/")]
    assert after == markers and len(markers) == len(needles), after
    assert read > len(markers)  # the successors, the rewritten files and the rest of the lake were read too


@pytest.mark.parametrize("versioned", [True, False])
def test_remove_and_forget_history(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, versioned: bool) -> None:
    """`forget_history` keeps only a file's current bytes, `remove` leaves no version of it; on a bucket without
    versioning both work as a plain overwrite and delete."""
    from airflow.sdk import ObjectStoragePath

    from crispflow.lake import forget_history, remove, write_atomic

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_s3.aws_conn())
    bucket, client = f"lake-{uuid.uuid4().hex[:12]}", moto_s3.client()
    client.create_bucket(Bucket=bucket)
    if versioned:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    kept, gone = (ObjectStoragePath(f"s3://{bucket}/lake/{name}", conn_id=CONN_ID) for name in ("kept", "gone"))
    for data in (b"old", b"new"):
        write_atomic(kept, data)
        write_atomic(gone, data)
    write_atomic(ObjectStoragePath(f"s3://{bucket}/lake/kept-other", conn_id=CONN_ID), b"same prefix")

    assert forget_history(kept) == (1 if versioned else 0)
    remove(gone)
    remove(gone)  # a rerun: nothing left, no error

    def versions(key: str) -> list[bytes]:
        listed = client.list_object_versions(Bucket=bucket, Prefix=key)
        return [client.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
                for v in listed.get("Versions", []) if v["Key"] == key] + \
               [b"<delete marker>" for m in listed.get("DeleteMarkers", []) if m["Key"] == key]

    assert versions("lake/kept") == [b"new"] and versions("lake/gone") == []
    assert versions("lake/kept-other") == [b"same prefix"]  # a key that only shares the prefix is untouched
    assert kept.read_bytes() == b"new" and not gone.exists()
