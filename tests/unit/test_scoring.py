"""Batch scoring on a tmp lake: footer-only plans, range reads, exactly-once parts and commit, rows in == scored."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from crispflow.errors import LakeError
from crispflow.lake import Lake, canonical_json, frame_digest, read_json, write_atomic
from crispflow.model.features import build_preprocessor, features, labels
from crispflow.model.training import positive_proba
from crispflow.serving import batch_scoring as scoring
from crispflow.serving.batch_scoring import ModelRef, ScoringError
from crispflow.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "include" / "data" / "lending_club.parquet"
RUN = {"dag_id": "batch_score", "run_id": "manual__1"}
MODEL = ModelRef("crispflow-lending_club", "3", "champion", "a" * 64, "run-1", 0.25)


@pytest.fixture(scope="module")
def spec():
    return load_spec("lending_club")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_parquet(DATA)


@pytest.fixture(scope="module")
def model(spec, frame):
    """A small fitted pipeline with crispflow's own preprocessing (what the registry would hold)."""
    with threadpool_limits(limits=1):
        return Pipeline([("preprocess", build_preprocessor(spec)), ("model", LogisticRegression(max_iter=300))]).fit(
            features(spec, frame), labels(spec, frame))


def publish_frame(lake: Lake, pipeline: str, frame: pd.DataFrame, row_group_size: int,
                  at: str = "2026-11-01T00:00:00+00:00") -> str:
    """A curated version as the data phase leaves it (data.parquet + manifest.json), with chosen row groups."""
    digest = frame_digest(frame)
    version_id = "ds-" + digest[:16]
    folder = lake.version_dir(pipeline, version_id)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "data.parquet",
                   row_group_size=row_group_size)
    manifest = {"dataset_version_id": version_id, "content_sha256": digest, "pipeline": pipeline,
                "rows": {"in": len(frame), "published": len(frame), "quarantined": 0},
                "interval": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-10-01T00:00:00+00:00"},
                "files": {"data": lake.relative(folder / "data.parquet")}, "published_by": {**RUN, "at": at}}
    write_atomic(lake.manifest(pipeline, version_id), canonical_json(manifest))
    return version_id


@pytest.fixture
def lake_and_version(tmp_path, frame) -> tuple[Lake, str]:
    lake = Lake(tmp_path)
    return lake, publish_frame(lake, "lending_club", frame, row_group_size=1_500)


def no_model():
    raise AssertionError("the model must not be loaded for an already scored partition")


def score_all(lake, spec, plan, model) -> list[dict]:
    return [scoring.score_partition(lake, spec, plan, p, lambda: model, chunk_rows=700) for p in plan["partitions"]]


def test_split_ranges_packs_small_groups_and_splits_large_ones() -> None:
    groups = [(0, 400), (400, 400), (800, 400), (1200, 2500), (3700, 100)]
    assert scoring.split_ranges(groups, 1000) == [(0, 800), (800, 1200), (1200, 2033), (2033, 2866), (2866, 3700),
                                                   (3700, 3800)]
    assert scoring.split_ranges([(0, 10), (10, 0), (10, 5)], 1000) == [(0, 15)]
    assert scoring.split_ranges([], 1000) == []


def test_plan_covers_every_row_once_aligned_to_row_groups(lake_and_version, spec, frame) -> None:
    lake, version = lake_and_version
    out = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)
    plan = out["plan"]
    assert out["created"]
    assert plan["rows"] == len(frame) and plan["row_groups"] == -(-len(frame) // 1_500)
    bounds = [(p["start"], p["stop"]) for p in plan["partitions"]]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(frame)
    assert all(a[1] == b[0] for a, b in pairwise(bounds))  # contiguous, no overlap
    assert all(s % 1_500 == 0 and e - s <= 3_000 for s, e in bounds)  # whole row groups
    assert plan["output"] == f"scores/lending_club/{version}/v3"
    assert read_json(lake.root / plan["output"] / scoring.PLAN) == plan


def test_the_first_plan_wins_and_another_model_cannot_reuse_its_folder(lake_and_version, spec) -> None:
    lake, version = lake_and_version
    first = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    again = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=1_000)
    assert not again["created"] and again["plan"] == first
    forged = ModelRef(**{**MODEL.to_json(), "artifact_sha256": "b" * 64})  # same version number, other artifact
    with pytest.raises(ScoringError, match="another dataset or model"):
        scoring.plan_partitions(lake, spec, version, forged)


@pytest.mark.parametrize("rows", [0, 999, 2.5, "1000"])
def test_bad_partition_rows_is_a_clear_error(lake_and_version, spec, rows) -> None:
    lake, version = lake_and_version
    with pytest.raises(ScoringError, match="partition_rows"):
        scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=rows)


def test_an_unknown_dataset_version_or_a_row_count_mismatch_is_refused(lake_and_version, spec) -> None:
    lake, version = lake_and_version
    with pytest.raises(LakeError, match="no published dataset version"):
        scoring.plan_partitions(lake, spec, "ds-0123456789abcdef", MODEL)
    manifest_path = lake.manifest("lending_club", version)
    manifest = read_json(manifest_path)
    manifest["rows"]["published"] += 1
    write_atomic(manifest_path, canonical_json(manifest))
    with pytest.raises(LakeError, match="manifest says"):
        scoring.plan_partitions(lake, spec, version, MODEL)


def test_scores_match_the_model_on_the_whole_frame_and_rows_in_equal_rows_scored(
        lake_and_version, spec, frame, model) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    results = score_all(lake, spec, plan, model)
    assert all(r["created"] for r in results)
    out = scoring.commit(lake, plan["output"], RUN, results)
    manifest = out["manifest"]
    assert out["created"] and manifest["rows"] == {"in": len(frame), "scored": len(frame)}
    assert manifest["model"] == MODEL.to_json() and manifest["dataset_version_id"] == version
    assert manifest["committed_by"]["run_id"] == "manual__1"
    scored = scoring.read_scores(lake, plan["output"])
    assert scored[scoring.ROW].tolist() == list(range(len(frame)))
    assert scored[spec.key].tolist() == frame[spec.key].tolist()
    with threadpool_limits(limits=1):
        expected = positive_proba(model, features(spec, frame))
    np.testing.assert_allclose(scored[scoring.SCORE].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    assert (scored[scoring.PREDICTION] == (scored[scoring.SCORE] >= MODEL.threshold)).all()
    assert 0 < scored[scoring.PREDICTION].mean() < 1


def test_a_rerun_writes_nothing_new_loads_no_model_and_commits_once(lake_and_version, spec, model) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    score_all(lake, spec, plan, model)
    first = scoring.commit(lake, plan["output"], RUN)
    files = {p.name: p.read_bytes() for p in (lake.root / plan["output"]).iterdir()}
    again = [scoring.score_partition(lake, spec, plan, p, no_model) for p in plan["partitions"]]
    assert not any(r["created"] for r in again)
    second = scoring.commit(lake, plan["output"], {**RUN, "run_id": "manual__2"}, again)
    assert not second["created"] and second["manifest"] == first["manifest"]
    assert {p.name: p.read_bytes() for p in (lake.root / plan["output"]).iterdir()} == files
    assert not [n for n in files if n.startswith(".")]  # no temporary files left behind


def test_rescoring_after_a_lost_part_gives_the_same_bytes(lake_and_version, spec, model) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    results = score_all(lake, spec, plan, model)
    part = lake.root / results[1]["file"]
    before = part.read_bytes()
    part.unlink()
    redo = scoring.score_partition(lake, spec, plan, plan["partitions"][1], lambda: model, chunk_rows=700)
    assert redo["created"] and part.read_bytes() == before


def test_concurrent_duplicates_create_one_file(lake_and_version, spec, model) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    start = threading.Barrier(4)

    def one(_: int) -> dict:
        start.wait()
        return scoring.score_partition(lake, spec, plan, plan["partitions"][0], lambda: model)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert sum(r["created"] for r in results) == 1
    assert {r["rows"] for r in results} == {plan["partitions"][0]["stop"]}
    parts = [p.name for p in (lake.root / plan["output"]).iterdir() if p.name.startswith("part-")]
    assert parts == ["part-00000.parquet"]


def test_commit_refuses_a_missing_or_misplaced_part(lake_and_version, spec, model) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    results = score_all(lake, spec, plan, model)
    out = lake.root / plan["output"]
    (out / scoring.part_name(1)).unlink()
    with pytest.raises(ScoringError, match=r"partition 1 \(part-00001\.parquet\) was not scored"):
        scoring.commit(lake, plan["output"], RUN)
    (out / scoring.part_name(1)).write_bytes((out / scoring.part_name(0)).read_bytes())  # right name, wrong rows
    with pytest.raises(ScoringError, match=r"part-00001\.parquet: holds"):
        scoring.commit(lake, plan["output"], RUN)
    assert not (out / scoring.SUCCESS).exists()
    (out / scoring.part_name(1)).unlink()
    scoring.score_partition(lake, spec, plan, plan["partitions"][1], lambda: model)
    with pytest.raises(ScoringError, match="reported"):  # the tasks' results must match the files too
        scoring.commit(lake, plan["output"], RUN, results[:-1])
    assert scoring.commit(lake, plan["output"], RUN, results)["created"]


def test_a_partition_outside_the_plan_is_refused(lake_and_version, spec, model) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    for bad in ({"index": 0, "start": 0, "stop": 10}, {"index": 99, "start": 0, "stop": 3000}, {}):
        with pytest.raises(ScoringError, match="not in the plan"):
            scoring.score_partition(lake, spec, plan, bad, lambda: model)


class NaNModel:
    classes_ = np.array([False, True])

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = np.full(len(x), 0.5)
        p[len(x) // 2] = np.nan
        return np.column_stack([1 - p, p])


def test_a_non_finite_score_fails_the_partition_and_writes_nothing(lake_and_version, spec) -> None:
    lake, version = lake_and_version
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=3_000)["plan"]
    with pytest.raises(ScoringError, match=r"partition 0: 1 rows from row \d+ got no finite score"):
        scoring.score_partition(lake, spec, plan, plan["partitions"][0], NaNModel)
    assert sorted(p.name for p in (lake.root / plan["output"]).iterdir()) == [scoring.PLAN]


def test_a_single_row_group_larger_than_a_partition_is_split_by_offsets(tmp_path, spec, frame, model) -> None:
    lake = Lake(tmp_path)
    version = publish_frame(lake, "lending_club", frame, row_group_size=len(frame))
    plan = scoring.plan_partitions(lake, spec, version, MODEL, partition_rows=4_000)["plan"]
    assert plan["row_groups"] == 1 and len(plan["partitions"]) == 3
    score_all(lake, spec, plan, model)
    assert scoring.commit(lake, plan["output"], RUN)["manifest"]["rows"]["scored"] == len(frame)
    assert scoring.read_scores(lake, plan["output"])[scoring.ROW].is_unique


def test_newest_version_is_the_latest_published(tmp_path, frame) -> None:
    lake = Lake(tmp_path)
    with pytest.raises(ScoringError, match="no published dataset version"):
        scoring.newest_version(lake, "lending_club")
    old = publish_frame(lake, "lending_club", frame.head(2000), 1000, at=datetime(2026, 3, 1, tzinfo=UTC).isoformat())
    new = publish_frame(lake, "lending_club", frame.head(1000), 1000, at=datetime(2026, 4, 1, tzinfo=UTC).isoformat())
    publish_frame(lake, "other", frame.head(500), 1000, at=datetime(2026, 5, 1, tzinfo=UTC).isoformat())
    (lake.version_dir("lending_club", "ds-unfinished00000")).mkdir(parents=True)  # no manifest: invisible
    assert old != new and scoring.newest_version(lake, "lending_club") == new


def _scores(lake: Lake, spec, model) -> np.ndarray:
    plan = scoring.plan_partitions(lake, spec, publish_frame(lake, "lending_club", first_rows(), 1_500),
                                   MODEL, partition_rows=3_000)["plan"]
    scoring.commit(lake, plan["output"], RUN, score_all(lake, spec, plan, model))
    return scoring.read_scores(lake, plan["output"])[scoring.SCORE].to_numpy()


def first_rows() -> pd.DataFrame:
    return pd.read_parquet(DATA).head(4_000)


@pytest.mark.parametrize(("estimator", "scorer"), [
    (LogisticRegression(max_iter=300), "scored by its compiled scorer"),
    (KNeighborsClassifier(n_neighbors=15), "scored by its pipeline"),  # no compiled form: the model itself scores
])
def test_batch_scores_come_from_the_verified_compiled_scorer_or_else_the_model(
        tmp_path, spec, estimator, scorer, caplog) -> None:
    frame = first_rows()
    with threadpool_limits(limits=1):
        model = Pipeline([("preprocess", build_preprocessor(spec)), ("model", estimator)]).fit(
            features(spec, frame), labels(spec, frame))
        expected = positive_proba(model, features(spec, frame))
    caplog.set_level(logging.INFO, logger="crispflow.serving.batch_scoring")
    scores = _scores(Lake(tmp_path), spec, model)
    assert scorer in caplog.text
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-12)
