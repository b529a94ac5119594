"""plan_retrain without Airflow: a drift event is trusted only as the sensor recorded it; the training window is
composed from the lake's versions; a window too small for training is refused (ParamsError names the field)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from crispflow.errors import ParamsError
from crispflow.lake import Lake, canonical_json, frame_digest, write_atomic, write_parquet
from crispflow.monitoring import store
from crispflow.monitoring.retrain import plan_retrain
from crispflow.settings import project_root

PIPELINE = "lending_club"
MODEL = f"crispflow-{PIPELINE}"
EPISODE = "champion-20260301T020000Z"
RUN = {"dag_id": "retrain_on_drift", "run_id": "r1", "task_id": "resolve", "try_number": 1}
RECORD = {"pipeline": PIPELINE, "model": MODEL, "alias": "champion", "episode_id": EPISODE,
          "fired_at": "2026-03-01T02:05:00+00:00", "fired_by": {"run_id": "w1"}, "features": ["int_rate"]}


def publish(lake: Lake, version: str, frame: pd.DataFrame, end: str) -> None:
    """A published version as the lake records it: its data and its manifest."""
    data = lake.version_dir(PIPELINE, version) / "data.parquet"
    write_parquet(data, frame)
    manifest = {"dataset_version_id": version, "pipeline": PIPELINE, "content_sha256": frame_digest(frame),
                "rows": {"published": len(frame)}, "interval": {"start": "2026-01-01T00:00:00+00:00", "end": end},
                "sources": [], "files": {"data": lake.relative(data)},
                "published_by": {"at": datetime.now(UTC).isoformat()}}
    write_atomic(lake.manifest(PIPELINE, version), canonical_json(manifest))


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Lake]:
    root, lake = tmp_path / "predictions", Lake(tmp_path / "lake")
    assert store.record_episode(root, MODEL, EPISODE, RECORD)
    return root, lake


def plan(world, events, **kwargs) -> dict:
    root, lake = world
    return plan_retrain(events, root=root, lake=lake, **{"window_days": 365, "run": RUN, **kwargs})


def test_a_recorded_episode_plans_one_training_run_on_the_composed_window(world) -> None:
    from crispflow.data.datasets import read_manifest

    _, lake = world
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")
    publish(lake, "ds-00000000000000aa", loans.head(3000), "2026-10-01T00:00:00+00:00")
    publish(lake, "ds-00000000000000bb", loans.iloc[2500:3500], "2026-11-01T00:00:00+00:00")
    older = {**RECORD, "episode_id": "champion-20260201T000000Z"}  # coalesced: only the newest is planned
    out = plan(world, [older, dict(RECORD)])
    assert out["run_id"] == f"drift__{MODEL}__{EPISODE}" and out["episode_id"] == EPISODE
    assert out["coalesced_events"] == 1 and out["conf"]["pipeline"] == PIPELINE
    composed = read_manifest(lake, out["conf"]["dataset_version_id"], PIPELINE)
    assert composed["parents"] == ["ds-00000000000000aa", "ds-00000000000000bb"]
    assert out["parents"] == composed["parents"]  # for lineage: the versions the window is composed of
    assert composed["rows"]["published"] == 3500 and composed["published_by"]["run_id"] == "r1"
    assert plan(world, [dict(RECORD)]) == {**out, "coalesced_events": 0}  # the same window again: same version


def test_bad_requests_name_the_field(world) -> None:
    _, lake = world
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")
    cases = [("none arrived", [], {}),
             ("was never recorded by the drift sensor", [{**RECORD, "episode_id": "champion-20990101T000000Z"}], {}),
             ("features \\['a'\\] does not match the recorded episode", [{**RECORD, "features": ["a"]}], {}),
             (r"events of several pipelines \['lending_club', 'other'\]",
              [{**RECORD, "pipeline": "other", "model": "crispflow-other"}, RECORD], {}),
             ("dataset: lending_club has no published dataset version", [RECORD], {})]
    for message, events, kwargs in cases:
        with pytest.raises(ParamsError, match=message):
            plan(world, events, **kwargs)
    publish(lake, "ds-00000000000000cc", loans.head(100), "2026-10-01T00:00:00+00:00")
    with pytest.raises(ParamsError, match=r"has 100 rows < training\.min_rows=2000"):
        plan(world, [RECORD])
