"""Answering an Airflow HITL step (ApprovalOperator) over the REST API, as a person on the Required actions page."""

from __future__ import annotations

from typing import Any

from crispflow.stack.airflow_api import AirflowAPI
from support.stack import wait_for


def hitl_path(dag_id: str, run_id: str, task_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"


def answer(api: AirflowAPI, dag_id: str, run_id: str, task_id: str, option: str) -> Any:
    return api.request("PATCH", hitl_path(dag_id, run_id, task_id),
                       json={"chosen_options": [option], "params_input": {}})


def answered(api: AirflowAPI, dag_id: str, run_id: str, task_id: str, option: str) -> Any:
    """`answer`, then wait until the approval task has taken it. Airflow 3.3 can lose an answer that lands while
    the task is still pausing (the resumed try finds the task up for retry, and the retry asks again, with no
    response): asked again, the same person answers again, as they would on the Required actions page."""
    first = answer(api, dag_id, run_id, task_id, option)

    def taken() -> bool:
        states = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run_id)}
        if states[task_id] in ("success", "skipped", "failed"):
            return True
        if not api.request("GET", hitl_path(dag_id, run_id, task_id)).get("response_received"):
            answer(api, dag_id, run_id, task_id, option)
        return False

    wait_for(f"{task_id} taking the answer in {run_id}", taken, 600, 3)
    return first


def wait_until_asked(api: AirflowAPI, dag_id: str, run_id: str, task_id: str, timeout: float = 600) -> Any:
    """The HITL details once the task asks (its state `awaiting_input`)."""
    def asked() -> Any:
        states = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run_id)}
        if states.get(task_id) not in ("awaiting_input", "deferred"):
            return None
        return api.request("GET", hitl_path(dag_id, run_id, task_id))

    return wait_for(f"{task_id} asking in {run_id}", asked, timeout, 2)
