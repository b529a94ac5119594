"""Who may see and do what on the crispflow pages, asked of Airflow's own auth manager.

Airflow does not authenticate plugin apps: every route depends on `reads(dag_id)` (Airflow's `get_user`: the
`_token` cookie or a bearer token, 401 without; then DAG read access) or on `user()`. Actions are not routes
here: the pages trigger DAG runs through `/api/v2` with the user's own cookie, so Airflow checks and audits them;
`may_trigger` only decides whether a button is enabled.
"""

from __future__ import annotations

import re
from typing import Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import get_user, requires_access_dag
from fastapi import Depends, HTTPException

# The DAGs a page belongs to: reading the page needs read access to that DAG.
MODELS_DAG = "train_evaluate_register"
PROMOTIONS_DAG = "rollback"
DRIFT_DAG = "monitor_drift"
# The DAGs the buttons trigger.
ROLLBACK_DAG = "rollback"
PROMOTE_DAG = "promote_canary"
JUDGE_DAG = "canary_analysis"
ACKNOWLEDGE_DAG = "acknowledge_alert"

# Path parameters: anything else is a 404 (never a path into the lake).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # model, pipeline, alias, window key, dataset version
VERSION_RE = re.compile(r"^[0-9]{1,9}$")
DAG_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
RUN_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,250}$")  # only compared in SQL, never a path


def reads(dag_id: str) -> Any:
    """A route dependency: an authenticated user (401) who may read DAG `dag_id` (403)."""
    return Depends(requires_access_dag("GET", param_dag_id=dag_id))


def reads_run() -> Any:
    """A route dependency for `/runs/{dag_id}/{run_id}`: may read that DAG's runs (the dag_id of the path)."""
    return Depends(requires_access_dag("GET", DagAccessEntity.RUN))


def user() -> Any:
    """A parameter default: the authenticated Airflow user (401 when anonymous)."""
    return Depends(get_user)


def valid(value: str, pattern: re.Pattern[str]) -> str:
    """`value` when it matches `pattern` (and is no relative path segment), else 404."""
    if not pattern.fullmatch(value) or value in (".", ".."):
        raise HTTPException(404, "Not found")
    return value


def may_trigger(user: BaseUser, dag_id: str) -> bool:
    """Whether the auth manager lets `user` trigger `dag_id` (POST a DAG run) — the check `/api/v2` makes."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN, details=details,
                                                user=user)
