"""Airflow-layer tests: run one operator as the only task of a fresh DAG with `dag.test()` (a real task instance,
XCom, templating and asset events; no scheduler), on a fresh local lake."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crispflow.lake import Lake

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_alone(airflow_db, tmp_path: Path) -> Callable[..., tuple[Any, Any]]:
    """`run_alone(make, params, conf)`: build a DAG with `params`, call `make()` inside it to add the one task,
    store the DAG (dag.test() runs stored, serialized DAGs only), run it with `conf`. Returns (dag run, the task
    instance)."""

    def run(make: Callable[[], Any], params: dict[str, Any], conf: dict[str, Any] | None = None) -> tuple[Any, Any]:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
        from airflow.sdk import DAG

        from crispflow_airflow.dag_defaults import START_DATE

        with DAG(f"t_{uuid.uuid4().hex[:12]}", schedule=None, start_date=START_DATE, params=params) as dag:
            make()
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder=str(tmp_path))
        bag.bag_dag(dag)
        sync_bag_to_db(bag, "dags-folder", None)
        dr = dag.test(run_conf=conf)
        return dr, dr.get_task_instances()[0]

    return run


@pytest.fixture
def lake(tmp_path: Path, monkeypatch) -> Lake:
    """A fresh local lake, the one every hook of the test resolves (CRISPFLOW_LAKE_URL)."""
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", (tmp_path / "lake").as_uri())
    return Lake(tmp_path / "lake")


@pytest.fixture
def stage_january() -> Callable[..., str]:
    """`stage_january(lake, change=None)`: January 2026 of the demo data (optionally changed) staged as a
    lending_club batch, as IngestOperator leaves it. Returns the batch id."""
    from datetime import UTC, datetime

    import pandas as pd

    from crispflow.data.datasets import stage
    from crispflow.data.extracts import assemble
    from crispflow.data.sources import Extract, Interval
    from crispflow.lake import sha256
    from crispflow.spec import load_spec

    def make(lake: Lake, change: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> str:
        raw = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
        frame = raw[raw["application_month"] == "2026-01-01"].reset_index(drop=True)
        frame = change(frame) if change else frame
        spec = load_spec("lending_club")
        interval = Interval(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
        data = frame.to_json(orient="records").encode()
        extract = Extract("loans", frame, data, "json", {"source": "loans", "sha256": sha256(data)})
        batch, report = assemble(spec, [extract], interval)
        return stage(lake, spec, interval, [extract], batch, report)["batch_id"]

    return make
