"""Every DAG loads, follows the house rules, parses fast and touches nothing heavy at parse time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from crispflow.stack.validate import check_dags

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) == len(DAG_FILES) > 0


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_follows_the_house_rules(dagbag, path: Path) -> None:
    dag = dagbag.dags.get(path.stem)
    assert dag is not None, f"{path.name} must define dag_id == {path.stem!r}"
    assert dag.fileloc == str(path)
    assert dag.tags and "crispflow" in dag.tags
    assert dag.catchup is False
    assert dag.max_active_runs is not None
    assert dag.start_date is not None and dag.start_date.tzinfo is not None
    assert dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(hours=6), task.task_id


def test_dag_files_parse_fast_without_heavy_imports_or_connections() -> None:
    """`crispflow validate`'s DAG check: each file in a fork of a process with Airflow loaded (as the
    dag-processor does), Variable/Connection access forbidden, no heavy module, dag_id == file stem."""
    assert check_dags(ROOT / "dags") == []  # the limit `crispflow validate` applies (2 s: a loaded CI box took 1.7)


def test_plugins_folder_loads_only_the_plugin_file() -> None:
    """Airflow imports every scanned plugins/ file as a top-level module named after it: hooks/mlflow.py would
    shadow the real mlflow. Only crispflow_plugin.py may be scanned."""
    from airflow._shared.module_loading import find_path_from_directory

    scanned = [Path(p) for p in find_path_from_directory(str(ROOT / "plugins"), ".airflowignore", "glob")]
    assert sorted(p.name for p in scanned if p.suffix == ".py") == ["crispflow_plugin.py"]


def test_asset_scheduled_dags_get_one_run_per_pipeline_partition(dagbag) -> None:
    """Every DAG scheduled on a crispflow asset is partitioned (one run per `<pipeline>/<id>` key, never a run that
    coalesces two pipelines' events), and every producer emits that asset directly (an alias cannot carry keys)."""
    from airflow.sdk import Asset, AssetAlias, PartitionedAssetTimetable
    from airflow.sdk.definitions.asset import BaseAsset

    consumers = {dag_id: dag for dag_id, dag in dagbag.dags.items()
                 if isinstance(getattr(dag.timetable, "asset_condition", None), BaseAsset)}
    assert set(consumers) == {"train_evaluate_register", "retrain_on_drift", "retrain_after_erasure"}
    for dag in consumers.values():
        assert isinstance(dag.timetable, PartitionedAssetTimetable), dag.dag_id
    outlets = {(dag.dag_id, task.task_id): task.outlets for dag in dagbag.dags.values() for task in dag.tasks
               if task.outlets}
    assert all(isinstance(o, Asset) and not isinstance(o, AssetAlias) for os_ in outlets.values() for o in os_)
    assert {k: [o.name for o in v] for k, v in outlets.items()} == {
        ("ingest_validate", "publish"): ["crispflow_curated_dataset"],
        ("watch_drift", "watch"): ["crispflow_drift_detected"],
        ("batch_score", "commit"): ["crispflow_batch_scores"],
        ("erase_subject", "erase"): ["crispflow_erasure"],
    }
