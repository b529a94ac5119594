"""The run note of a crispflow run that skipped its work: a task pushes its skip reason and skips; when the run
finishes, the listener (registered by the plugin) sets the run's note from it, in the DB. Only crispflow DAGs,
never over a note someone wrote. Real runs (`dag.test`, which calls the listeners as the scheduler does)."""

from __future__ import annotations

import uuid
from pathlib import Path

REASON = "no dataset large enough to train on (ds-0123456789abcdef: 812 rows < training.min_rows=2000)"


def run(tmp_path: Path, tags: list[str]):
    """A two-task DAG whose first task skips with REASON (the second is skipped with it), stored and run."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk import DAG, task

    from crispflow_airflow.dag_defaults import START_DATE

    with DAG(f"t_{uuid.uuid4().hex[:12]}", schedule=None, start_date=START_DATE, tags=tags) as dag:
        @task
        def resolve(**context) -> dict:
            from crispflow_airflow.run_notes import skip

            skip(context, REASON)

        @task
        def train(request: dict) -> None:
            raise AssertionError("never runs")

        train(resolve())
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(tmp_path))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


def stored_note(dag_run) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.get(DagRun, dag_run.id).note


def test_a_skipped_crispflow_run_says_why_in_its_note(airflow_db, tmp_path: Path) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from crispflow.ui.run_view import skip_note
    from crispflow_airflow.listeners import note_skipped_run

    dr = run(tmp_path, ["crispflow", "model"])
    assert dr.state == "success" and {ti.state for ti in dr.get_task_instances()} == {"skipped"}
    assert stored_note(dr) == skip_note(REASON)  # set by the plugin's listener when the run finished

    # the listener function itself, on the run in a session (as the scheduler calls it)
    with create_session() as session:
        session.get(DagRun, dr.id).note = None
    assert stored_note(dr) is None
    with create_session() as session:
        assert note_skipped_run(session.get(DagRun, dr.id)) == skip_note(REASON)
    assert stored_note(dr) == skip_note(REASON)

    # a note someone wrote is kept
    with create_session() as session:
        session.get(DagRun, dr.id).note = "rerun after the source is fixed"
    with create_session() as session:
        assert note_skipped_run(session.get(DagRun, dr.id)) is None
    assert stored_note(dr) == "rerun after the source is fixed"


def test_other_dags_get_no_note(airflow_db, tmp_path: Path) -> None:
    from crispflow_airflow.listeners import note_skipped_run

    dr = run(tmp_path, ["other"])
    assert dr.state == "success" and stored_note(dr) is None
    assert note_skipped_run(dr) is None and stored_note(dr) is None
