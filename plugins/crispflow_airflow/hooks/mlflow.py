"""MLflow through an Airflow connection: the tracking URI and credentials never live in code or specs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

from crispflow.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MlflowHook(BaseHook):
    """A client for the tracking server of connection `mlflow_conn_id` (an http connection: host, port,
    schema, login/password for MLflow basic auth). Without that connection: MLFLOW_TRACKING_URI, as set by
    `crispflow up`.

    :param mlflow_conn_id: the Airflow connection id (default `mlflow_default`)
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    def tracking_uri(self) -> str:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            return Settings.from_env().mlflow_tracking_uri
        if conn.login:  # MLflow's client reads basic-auth credentials from these variables
            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""
        port = f":{conn.port}" if conn.port else ""
        return f"{conn.schema or 'http'}://{conn.host}{port}"

    def get_client(self) -> MlflowClient:
        from crispflow.model.registry import client

        return client(self.tracking_uri())
