"""The prediction store (predictions, feedback, drift, alerts, canary reports) through Airflow's ObjectStoragePath."""

from __future__ import annotations

from airflow.sdk import BaseHook, ObjectStoragePath

from crispflow.settings import Settings
from crispflow_airflow.hooks.lake import object_path


class PredictionStoreHook(BaseHook):
    """Resolves the prediction store's root. Stateless: builds a new path each call.

    :param url: root URL (default: CRISPFLOW_PREDICTIONS_URL, else `<lake>/predictions`)
    :param conn_id: Airflow connection for the object store (default: the lake's connection)
    """

    conn_name_attr = "conn_id"
    hook_name = "crispflow prediction store"

    def __init__(self, url: str | None = None, conn_id: str | None = None) -> None:
        super().__init__()
        self.url = url
        self.conn_id = conn_id

    def get_root(self) -> ObjectStoragePath:
        settings = Settings.from_env()
        url = self.url or settings.predictions_url
        conn_id = self.conn_id if self.conn_id is not None else settings.lake_conn_id
        return object_path(url, conn_id)
