"""The ingest_validate DAG through Airflow (`dag.test()`): real data, every kind of bad batch, bad conf, reruns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import func, select

from crispflow.data.datasets import read_manifest
from crispflow.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
JAN = {"start": "2026-01-01", "end": "2026-02-01"}


@pytest.fixture
def dag(airflow_db):
    """A freshly parsed DAG per test: `dag.test(run_conf=...)` merges the conf into the DAG's params in place."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors
    return bag.dags["ingest_validate"]


@pytest.fixture(scope="module")
def lake() -> Lake:
    return Lake(Path(os.environ["CRISPFLOW_LAKE_URL"].removeprefix("file://")))


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "lending_club.yaml").write_text(yaml.safe_dump(DEMO))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(folder))
    return folder


def write_case(folder: Path, name: str, frame: pd.DataFrame | None = None, raw: bytes | None = None,
               fmt: str = "parquet") -> None:
    """A spec `name` whose only source is a file holding `frame` (or raw bytes)."""
    data_file = folder / f"{name}.{fmt}"
    if raw is not None:
        data_file.write_bytes(raw)
    elif fmt == "csv":
        frame.to_csv(data_file, index=False)
    else:
        frame.to_parquet(data_file, index=False)
    spec = {**DEMO, "name": name, "sources": [{"name": "loans", "kind": "file", "url": data_file.as_uri(),
                                               "format": fmt}]}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def run(dag, conf: dict):
    dr = dag.test(run_conf=conf)
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


def asset_events() -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(AssetEvent)
                              .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                              .where(AssetModel.name == "crispflow_curated_dataset"))


def month() -> pd.DataFrame:
    raw = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    return raw[raw["application_month"] == "2026-01-01"].reset_index(drop=True)


def test_real_data_publishes_once_and_emits_one_event(dag, lake) -> None:
    before = asset_events()
    conf = {"pipeline": "lending_club", "start": "2026-01-01", "end": "2026-10-01"}
    dr, tis = run(dag, conf)
    assert dr.state == "success", {k: v.state for k, v in tis.items()}
    out = tis["publish"].xcom_pull(task_ids="publish")
    assert out["created"] and out["event_emitted"]
    manifest = read_manifest(lake, out["dataset_version_id"])
    rows = manifest["rows"]
    assert rows["in"] == rows["published"] + rows["quarantined"] and rows["quarantined"] == 2
    assert manifest["published_by"]["run_id"] == dr.run_id
    assert asset_events() == before + 1

    dr2, tis2 = run(dag, conf)  # the same run again: same version, no second event
    assert dr2.state == "success"
    again = tis2["publish"].xcom_pull(task_ids="publish")
    assert again["dataset_version_id"] == out["dataset_version_id"]
    assert not again["created"] and not again["event_emitted"]
    assert asset_events() == before + 1


@pytest.mark.parametrize(
    ("case", "make", "quarantined"),
    [
        ("t_nulls", lambda m: m.assign(int_rate=np.where(m.index < 3, np.nan, m["int_rate"])),
         {"int_rate:not_null": 3}),
        ("t_range", lambda m: m.assign(revol_util=np.where(m.index < 2, 999.0, m["revol_util"])),
         {"revol_util:range": 2}),
        ("t_dupes", lambda m: pd.concat([m, m.iloc[:4]], ignore_index=True), {"loan_id:duplicate_key": 4}),
    ],
)
def test_row_problems_are_quarantined_and_the_rest_published(dag, lake, pipelines, case, make, quarantined) -> None:
    frame = make(month())
    write_case(pipelines, case, frame)
    dr, tis = run(dag, {"pipeline": case, **JAN})
    assert dr.state == "success"
    out = tis["publish"].xcom_pull(task_ids="publish")
    manifest = read_manifest(lake, out["dataset_version_id"], case)
    assert manifest["quality"]["reasons"] == quarantined
    assert manifest["rows"]["in"] == len(frame) == manifest["rows"]["published"] + manifest["rows"]["quarantined"]
    quarantine = pd.read_parquet(lake.root / manifest["files"]["quarantine"])
    assert len(quarantine) == sum(quarantined.values())


@pytest.mark.parametrize(
    ("case", "make", "fmt", "failed_task", "message"),
    [
        ("t_missing", lambda m: m.drop(columns=["term"]), "parquet", "validate", "missing columns ['term']"),
        ("t_extra", lambda m: m.assign(ssn="x"), "parquet", "validate", "unexpected columns ['ssn']"),
        ("t_retyped", lambda m: m.assign(funded_amnt="lots"), "csv", "validate", "column 'funded_amnt'"),
        ("t_header_only", lambda m: m.iloc[:0], "csv", "validate", "[rule: row_count]"),
        ("t_empty", b"", "csv", "ingest", "empty (0 bytes)"),
        ("t_corrupt", lambda m: None, "parquet", "ingest", "cannot parse as parquet"),
    ],
)
def test_bad_batches_fail_without_retry_and_lose_nothing(dag, lake, pipelines, capfd, case, make, fmt,
                                                         failed_task, message) -> None:
    if case == "t_corrupt":
        write_case(pipelines, case, raw=(ROOT / "include/data/lending_club.parquet").read_bytes()[:5000], fmt=fmt)
    elif isinstance(make, bytes):
        write_case(pipelines, case, raw=make, fmt=fmt)
    else:
        write_case(pipelines, case, make(month()), fmt=fmt)
    dr, tis = run(dag, {"pipeline": case, **JAN})
    assert dr.state == "failed"
    assert tis[failed_task].state == "failed" and tis[failed_task].try_number == 1  # not retried
    assert tis["publish"].state == "upstream_failed"
    out = capfd.readouterr().out
    assert message in out
    assert not (lake.root / "curated" / case).exists()
    assert (lake.root / "raw" / case).exists() or failed_task == "ingest"
    if failed_task == "validate":  # every staged row is in quarantine, tagged with the batch-level rule
        (batch_dir,) = list((lake.root / "batches" / case).iterdir())
        staged = pd.read_parquet(batch_dir / "batch.parquet")
        quarantine = pd.read_parquet(lake.quarantine(case, batch_dir.name))
        assert len(quarantine) == len(staged)
        assert (batch_dir / "quality.json").exists() and (batch_dir / "quality.html").exists()


def test_misconfigured_gate_is_reported_as_configuration_error(dag, pipelines, capfd) -> None:
    write_case(pipelines, "t_misconf", month())
    spec = yaml.safe_load((pipelines / "t_misconf.yaml").read_text())
    spec["quality"]["expectations"] = [{"name": "oops", "type": "expect_no_such_thing"}]
    (pipelines / "t_misconf.yaml").write_text(yaml.safe_dump(spec))
    dr, tis = run(dag, {"pipeline": "t_misconf", **JAN})
    assert dr.state == "failed" and tis["validate"].try_number == 1
    out = capfd.readouterr().out
    assert "misconfiguration (not a data problem)" in out and "expect_no_such_thing" in out
    assert "GateConfigurationError" in out and "DataQualityFailed" not in out


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"pipeline": "lending_club", "pipline": "x"}, "unknown field(s) ['pipline']"),
        ({"pipeline": "lending_club", "start": "2026-02-30", "end": "2026-03-01"}, "start: '2026-02-30' is not a date"),
        ({"pipeline": "no_such_spec", **JAN}, "no such pipeline spec"),
        ({"pipeline": "lending_club"}, "this run has no data interval"),
    ],
)
def test_bad_conf_is_rejected_with_a_clear_message(dag, capfd, conf, message) -> None:
    dr, tis = run(dag, conf)
    assert dr.state == "failed" and tis["ingest"].try_number == 1
    out = capfd.readouterr().out
    assert message in out


def test_params_schema_rejects_malformed_values_before_running(dag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"pipeline": "../../etc"})
