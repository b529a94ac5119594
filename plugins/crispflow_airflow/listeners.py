"""The run note of crispflow DAG runs that skipped their work: when such a run finishes, its note says why (e.g.
"Skipped, not failed: no dataset large enough to train on (ds-…: 812 rows < training.min_rows=2000)"), so the
grid's skipped columns explain themselves.

A listener (registered by the plugin) called by the scheduler when a run succeeds or fails, with the run in the
scheduler's own session: it reads the run's XComs (`skip_reason`, pushed by `crispflow_airflow.run_notes.skip`,
and the tasks' results) and sets the note through the ORM in that session, committed with the run's state. Only
runs of DAGs tagged `crispflow`, only runs with a skip reason, never over a note someone wrote. Never raises.
Cheap to import (every Airflow process imports the plugin).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
TAG = "crispflow"


@hookimpl
def on_dag_run_success(dag_run: DagRun, msg: str) -> None:
    note_skipped_run(dag_run)


@hookimpl
def on_dag_run_failed(dag_run: DagRun, msg: str) -> None:
    note_skipped_run(dag_run)


def note_skipped_run(dag_run: DagRun) -> str | None:
    """Set the run's note from its skip reasons (see the module); returns the note set, else None."""
    from sqlalchemy.orm import object_session

    try:
        session = object_session(dag_run)
        if session is not None:
            return _note(dag_run, session)
        from airflow.models.dagrun import DagRun as Run
        from airflow.utils.session import create_session

        with create_session() as own:
            attached = own.get(Run, dag_run.id)
            return _note(attached, own) if attached is not None else None
    except Exception:  # a note is never worth a scheduler error
        log.exception("could not set the note of %s/%s", dag_run.dag_id, dag_run.run_id)
        return None


def _note(dag_run: DagRun, session: Session) -> str | None:
    from airflow.models.dag import DagTag
    from sqlalchemy import select

    from crispflow_airflow.run_notes import SKIP_REASON

    if dag_run.note:
        return None
    if session.scalar(select(DagTag.name).where(DagTag.dag_id == dag_run.dag_id, DagTag.name == TAG)) is None:
        return None
    skips = _xcoms(session, dag_run, SKIP_REASON)
    if not skips:
        return None
    from crispflow.ui.run_view import run_summary

    results: dict[str, Any] = {key: value for key, value in _xcoms(session, dag_run, "return_value").items()}
    results.update({key: {"skipped": str(reason)} for key, reason in skips.items()})
    note = run_summary(dag_run.dag_id, results, conf=dag_run.conf or {})["note"]
    if note:
        dag_run.note = note
        log.info("%s/%s: note %r", dag_run.dag_id, dag_run.run_id, note)
    return note


def _xcoms(session: Session, dag_run: DagRun, key: str) -> dict[str, Any]:
    """`task_id` (or `task_id[map_index]`) → the XCom `key` of that task instance in the run, as plain JSON."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.execute(select(XComModel.task_id, XComModel.map_index, XComModel.value).where(
        XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id, XComModel.key == key))
    out: dict[str, Any] = {}
    for task_id, map_index, value in rows:
        if isinstance(value, str | bytes):
            with contextlib.suppress(ValueError):  # plain JSON: never instantiate classes named by stored data
                value = json.loads(value)
        out[task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"] = value
    return out
