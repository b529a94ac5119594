"""Write-audit-publish on the lake: content-addressed, exactly-once, nothing partial ever visible."""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from support.keys import session_keys

import crispflow.data.datasets as datasets
from crispflow.data.extracts import assemble
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Extract, Interval
from crispflow.errors import LakeError
from crispflow.lake import Lake, read_json
from crispflow.spec import load_spec

INTERVAL = Interval(datetime(2026, 1, 1), datetime(2026, 4, 1))
RUN = {"dag_id": "ingest_validate", "run_id": "manual__1"}


def staged_lake(root: Path, mutate=None) -> tuple[Lake, str]:
    """Stage the demo data's first quarter and run the gate on it, as the DAG's first two tasks do."""
    spec = load_spec("lending_club")
    raw = pd.read_parquet("include/data/lending_club.parquet")
    raw = mutate(raw) if mutate else raw
    extracts = [Extract("loans", raw, b"raw-bytes", "parquet", {"kind": "file", "sha256": "x"})]
    lake = Lake(root)
    batch, report = assemble(spec, extracts, INTERVAL)
    report = datasets.stage(lake, spec, INTERVAL, extracts, batch, report)
    outcome = validate_batch(spec, batch, INTERVAL, report["batch_id"])
    datasets.store_outcome(lake, spec, report["batch_id"], outcome, session_keys())
    return lake, report["batch_id"]


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Lake, str]:
    return staged_lake(tmp_path_factory.mktemp("lake"))


def _publish(root: str, batch_id: str, run_id: str) -> bool:
    return datasets.publish(Lake(Path(root)), load_spec("lending_club"), batch_id, {**RUN, "run_id": run_id}).created


def test_publish_records_lineage_and_the_rows_invariant(staged) -> None:
    lake, batch_id = staged
    out = datasets.publish(lake, load_spec("lending_club"), batch_id, RUN)
    m = datasets.read_manifest(lake, out.version_id)  # found by id alone
    assert m["dataset_version_id"] == out.version_id and m["batch_id"] == batch_id
    assert m["rows"]["in"] == m["rows"]["published"] + m["rows"]["quarantined"]
    assert m["rows"]["quarantined"] == 1  # one zero income in Q1
    assert m["sources"][0]["fingerprint"]["sha256"] == "x" and m["sources"][0]["raw"].startswith("raw/")
    assert m["spec_hash"] == load_spec("lending_club").spec_hash()
    assert m["published_by"]["run_id"] == "manual__1"
    for key in ("data", "quality_json", "quality_html", "quarantine"):
        assert (lake.root / m["files"][key]).exists(), key
    assert len(datasets.load_version(lake, out.version_id)) == m["rows"]["published"]
    quarantine = pd.read_parquet(lake.root / m["files"]["quarantine"])
    assert list(quarantine["_reasons"]) == ["annual_inc:positive_income"]


def test_same_content_same_version_once(staged) -> None:
    lake, batch_id = staged
    first = datasets.publish(lake, load_spec("lending_club"), batch_id, RUN)
    again = datasets.publish(lake, load_spec("lending_club"), batch_id, {**RUN, "run_id": "manual__2"})
    assert again.version_id == first.version_id and not again.created
    assert again.manifest["published_by"]["run_id"] == "manual__1"
    versions = list((lake.root / "curated" / "lending_club").iterdir())
    assert [v.name for v in versions] == [first.version_id]


def test_concurrent_publishers_agree_on_one_winner(tmp_path: Path) -> None:
    _, batch_id = staged_lake(tmp_path)
    with mp.get_context("spawn").Pool(4) as pool:
        created = pool.starmap(_publish, [(str(tmp_path), batch_id, f"run{i}") for i in range(4)])
    assert sorted(created) == [False, False, False, True]
    (version,) = list((tmp_path / "curated" / "lending_club").iterdir())
    winner = read_json(version / "manifest.json")["published_by"]["run_id"]
    assert winner == f"run{created.index(True)}"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_crash_before_the_manifest_leaves_no_visible_version(tmp_path: Path, monkeypatch) -> None:
    lake, batch_id = staged_lake(tmp_path)

    def crash(path, data):
        raise KeyboardInterrupt("killed")  # the process dies after the data files, before the commit point

    with monkeypatch.context() as m:
        m.setattr(datasets, "create_exclusive", crash)
        with pytest.raises(KeyboardInterrupt):
            datasets.publish(lake, load_spec("lending_club"), batch_id, RUN)
    (vdir,) = list((tmp_path / "curated" / "lending_club").iterdir())
    assert (vdir / "data.parquet").exists() and not (vdir / "manifest.json").exists()
    with pytest.raises(LakeError, match="no published dataset version"):
        datasets.read_manifest(lake, vdir.name)
    rerun = datasets.publish(lake, load_spec("lending_club"), batch_id, RUN)
    assert rerun.created and rerun.version_id == vdir.name


def test_tampered_data_is_refused(tmp_path: Path) -> None:
    lake, batch_id = staged_lake(tmp_path)
    out = datasets.publish(lake, load_spec("lending_club"), batch_id, RUN)
    data = tmp_path / out.manifest["files"]["data"]
    frame = pd.read_parquet(data)
    frame.loc[0, "int_rate"] = 1.0
    frame.to_parquet(data, index=False)
    with pytest.raises(LakeError, match="does not match its content hash"):
        datasets.load_version(lake, out.version_id)


def test_a_rejected_batch_cannot_be_published_but_is_kept(tmp_path: Path) -> None:
    lake, batch_id = staged_lake(tmp_path, mutate=lambda d: d.drop(columns=["term"]))
    with pytest.raises(LakeError, match="did not pass the gate"):
        datasets.publish(lake, load_spec("lending_club"), batch_id, RUN)
    quarantine = pd.read_parquet(lake.quarantine("lending_club", batch_id))
    staged = pd.read_parquet(lake.batch_dir("lending_club", batch_id) / datasets.BATCH)
    assert len(quarantine) == len(staged) > 0  # every row is kept, tagged with the batch reason
    assert (lake.root / "raw" / "lending_club").exists()
    assert not (lake.root / "curated").exists()
