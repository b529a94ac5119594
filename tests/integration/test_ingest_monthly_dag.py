"""The monthly ingest through Airflow (`dag.test()`): one `ingest_validate` run per pipeline spec, each for last
month, with a run id that makes a rerun trigger nothing twice."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())


@pytest.fixture
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors
    return bag.dags["ingest_monthly"]


def ingest_runs() -> dict[str, dict]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == "ingest_validate")).all()
        return {r.run_id: dict(r.conf or {}) for r in runs}


def test_every_pipeline_gets_its_own_ingest_run_for_last_month(dag, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for name in ("alpha", "beta"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**DEMO, "name": name}))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(folder))
    before = ingest_runs()
    dr = dag.test(logical_date=datetime(2026, 4, 1, tzinfo=UTC))
    assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
    made = {k: v for k, v in ingest_runs().items() if k not in before}
    assert made == {
        "scheduled__alpha__2026-03-01": {"pipeline": "alpha", "start": "2026-03-01", "end": "2026-04-01"},
        "scheduled__beta__2026-03-01": {"pipeline": "beta", "start": "2026-03-01", "end": "2026-04-01"},
    }
    mapped = sorted(ti.rendered_map_index for ti in dr.get_task_instances() if ti.task_id == "ingest")
    assert mapped == ["alpha", "beta"]
    again = dag.test(logical_date=datetime(2026, 4, 1, tzinfo=UTC), run_after=datetime.now(UTC))
    assert again.state == "success"
    assert {k: v for k, v in ingest_runs().items() if k not in before} == made  # nothing triggered twice
