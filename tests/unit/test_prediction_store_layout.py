"""The prediction store's root and layout (crispflow.predictions.store): storage options from the environment,
roots and paths per model, path-safe report names, and no credentials or connection ids in what is shown."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from upath import UPath

from crispflow.predictions.schema import PredictionLogError
from crispflow.predictions.store import (
    PART_RE,
    canary_report_path,
    display_path,
    drift_dir,
    model_dir,
    new_part_name,
    open_store,
    partition,
    root_of,
    storage_options_from_env,
)
from crispflow.predictions.writer import PredictionLog

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MODEL = "credit-risk"


def test_storage_options_from_env() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert storage_options_from_env("s3://bucket/predictions", env) == {
        "key": "AK",
        "secret": "SK",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    }
    assert storage_options_from_env("s3://bucket/p", {"AWS_ENDPOINT_URL": "http://h:1"}) == {
        "client_kwargs": {"endpoint_url": "http://h:1"}
    }
    assert storage_options_from_env("s3://bucket/p", {}) is None
    assert storage_options_from_env("/var/lib/predictions", env) is None
    assert storage_options_from_env(Path("/tmp/p"), env) is None


def test_the_root_shown_in_messages_carries_no_credentials() -> None:
    plog = PredictionLog(
        "s3://AKIDEXAMPLE:s3cr3t@bucket/predictions",
        MODEL,
        storage_options={"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}},
    )
    assert "s3cr3t" not in plog.root and "bucket/predictions" in plog.root


def test_an_embedded_connection_id_is_not_shown_either() -> None:
    store = open_store("s3://aws_default@bucket/predictions", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}})
    assert store.display == "s3://bucket/predictions"


# --- roots and paths -------------------------------------------------------------------------------------------------


def test_root_of_a_plain_path_a_file_url_and_an_s3_url(tmp_path: Path) -> None:
    plain, file_url = root_of(str(tmp_path)), root_of(tmp_path.as_uri())
    assert isinstance(plain, UPath) and isinstance(file_url, UPath)
    assert Path(plain.path) == Path(file_url.path) == tmp_path
    s3 = root_of("s3://bucket/predictions")  # no I/O: nothing is contacted
    assert (s3.protocol, s3.path.rstrip("/")) == ("s3", "bucket/predictions")
    assert open_store(plain, None).local and not open_store(s3, None).local


def test_a_root_of_a_url_is_where_the_writer_writes(tmp_path: Path) -> None:
    plog = PredictionLog(root_of(tmp_path.as_uri()), MODEL)
    plog.log([{"request_id": "r", "ts": T0}])
    plog.close()
    (file,) = model_dir(tmp_path, MODEL).rglob("*.parquet")
    assert file.parent.relative_to(tmp_path).as_posix() == f"{MODEL}/predictions/{partition(T0)}"


def test_model_and_drift_folders(tmp_path: Path) -> None:
    root = root_of(str(tmp_path))
    assert model_dir(root, MODEL) == root / MODEL
    assert drift_dir(root, MODEL) == root / MODEL / "drift"
    assert drift_dir(tmp_path, MODEL) == tmp_path / MODEL / "drift"  # any path-like root
    assert str(drift_dir(root_of("s3://bucket/p"), MODEL)).endswith(f"bucket/p/{MODEL}/drift")


@pytest.mark.parametrize("model", ["../etc", "a/b", "", ".hidden", "ends-with-space ", "ends-with-dot.", None, 7])
def test_a_bad_model_name_is_refused_before_any_path_is_built(tmp_path: Path, model: Any) -> None:
    for build in (model_dir, drift_dir):
        with pytest.raises(PredictionLogError, match="model: must be a registered model name"):
            build(tmp_path, model)
    with pytest.raises(PredictionLogError, match="model: must be a registered model name"):
        canary_report_path(tmp_path, model, "3", "run")


def test_a_canary_report_path_is_safe_for_a_run_id_with_colons_and_plus(tmp_path: Path) -> None:
    run_id = "scheduled__2026-03-01T09:00:00+00:00"
    path = canary_report_path(tmp_path, MODEL, "7", run_id)
    assert path == tmp_path / MODEL / "canary" / "v7" / "scheduled__2026-03-01T09_00_00_00_00.json"
    assert canary_report_path(tmp_path, MODEL, "7", "a/b").parent == path.parent  # never a sub-folder
    on_s3 = str(canary_report_path(root_of("s3://bucket/p"), MODEL, "7", run_id))
    assert on_s3.endswith(f"bucket/p/{MODEL}/canary/v7/scheduled__2026-03-01T09_00_00_00_00.json")
    assert ":" not in on_s3.removeprefix("s3://") and "+" not in on_s3


def test_partitions_and_part_file_names() -> None:
    hour = datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert partition(hour) == "date=2026-03-01/hour=09"
    first, second = new_part_name(MODEL, "predictions", hour), new_part_name(MODEL, "predictions", hour)
    assert first != second  # concurrent writers never collide
    assert first.startswith(f"{MODEL}/predictions/date=2026-03-01/hour=09/part-") and first.endswith(".parquet")
    match = PART_RE.search(first)
    assert match is not None and match.groups()[:2] == ("2026-03-01", "09")


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("s3://aws_default@bucket/predictions/x.json", "s3://bucket/predictions/x.json"),  # an Airflow conn id
        ("s3://AKID:s3cr3t@bucket/p", "s3://bucket/p"),
        ("s3://bucket/p", "s3://bucket/p"),
        ("file:///var/lib/p", "file:///var/lib/p"),
        ("/var/lib/p", "/var/lib/p"),
        (Path("/tmp/p/x.json"), "/tmp/p/x.json"),
    ],
)
def test_display_path_strips_an_embedded_connection_id_and_credentials(path: Any, shown: str) -> None:
    assert display_path(path) == shown
