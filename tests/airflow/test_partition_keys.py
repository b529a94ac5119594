"""Per-pipeline asset events: the partition key format, the check a partitioned run makes of its events, the
pipelines a monitoring run is mapped over, and `emit_once` withholding the event of a rerun."""

from __future__ import annotations

import pytest

from crispflow.errors import ParamsError
from crispflow.run_requests import check_partition, partition_key, target_pipelines


def test_a_key_names_the_pipeline_and_the_item() -> None:
    assert partition_key("lending_club", "ds-0123456789abcdef") == "lending_club/ds-0123456789abcdef"
    assert partition_key("p", "champion-20260301T020000Z") == "p/champion-20260301T020000Z"
    assert partition_key("p", "ds-0123456789abcdef.v12") == "p/ds-0123456789abcdef.v12"
    with pytest.raises(ParamsError, match="pipeline: 'Bad/name' is not a valid pipeline name"):
        partition_key("Bad/name", "ds-0123456789abcdef")
    with pytest.raises(ParamsError, match="is not a valid item id"):
        partition_key("p", "a/b")


def test_a_partitioned_run_accepts_only_events_of_its_own_key() -> None:
    event = {"pipeline": "a", "dataset_version_id": "ds-0123456789abcdef"}
    check_partition("a/ds-0123456789abcdef", [event, dict(event)], "dataset_version_id")
    check_partition(None, [{"pipeline": "anything"}], "dataset_version_id")  # a manual run: conf decides
    with pytest.raises(ParamsError, match="'b/ds-0123456789abcdef' does not match the run's partition key"):
        check_partition("a/ds-0123456789abcdef", [event, {**event, "pipeline": "b"}], "dataset_version_id")
    with pytest.raises(ParamsError, match="'a/None' does not match"):
        check_partition("a/ds-0123456789abcdef", [{"pipeline": "a"}], "dataset_version_id")


def test_monitoring_targets_the_named_pipeline_or_every_served_one() -> None:
    served = {"b", "c"}
    assert target_pipelines(None, ["c", "a", "b"], served.__contains__) == ["b", "c"]
    assert target_pipelines("a", ["c", "a", "b"], served.__contains__) == ["a"]  # a manual run: as asked
    assert target_pipelines(None, [], served.__contains__) == []  # nothing served: the mapped task is skipped
    with pytest.raises(ParamsError, match=r"pipeline: '\.\./x' is not a valid pipeline name"):
        target_pipelines("../x", [], served.__contains__)


def test_emit_once_keys_the_event_and_a_rerun_withdraws_the_outlet() -> None:
    from types import SimpleNamespace

    from airflow.sdk.execution_time.context import OutletEventAccessors

    from crispflow_airflow.assets import BATCH_SCORES, CURATED_DATASET, emit_once
    from crispflow_airflow.operators.publish import PublishDatasetOperator

    def context(run_id: str) -> dict:
        task = PublishDatasetOperator(task_id="publish", pipeline="a", batch_id="b").prepare_for_execution()
        task.outlets = [*task.outlets, BATCH_SCORES]
        ti = SimpleNamespace(dag_id="ingest_validate", run_id=run_id, task=task)
        return {"ti": ti, "task": task, "outlet_events": OutletEventAccessors()}

    made_by = {"dag_id": "ingest_validate", "run_id": "r1"}
    ours = context("r1")
    assert emit_once(ours, made_by, {"x": 1}, asset=CURATED_DATASET, pipeline="a", item="ds-0123456789abcdef")
    assert ours["outlet_events"][CURATED_DATASET].partition_keys == {"a/ds-0123456789abcdef"}
    assert ours["outlet_events"][CURATED_DATASET].extra == {"x": 1} and CURATED_DATASET in ours["task"].outlets

    rerun = context("r2")
    assert not emit_once(rerun, made_by, {"x": 1}, asset=CURATED_DATASET, pipeline="a", item="ds-0123456789abcdef")
    assert rerun["task"].outlets == [BATCH_SCORES]  # only the withheld asset is withdrawn, for this execution
    assert not rerun["outlet_events"][CURATED_DATASET].partition_keys
