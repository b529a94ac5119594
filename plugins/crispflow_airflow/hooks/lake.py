"""The data lake through Airflow's ObjectStoragePath: a local folder by default, s3:// in production."""

from __future__ import annotations

from airflow.sdk import BaseHook, ObjectStoragePath

from crispflow.lake import Lake
from crispflow.settings import Settings


class LakeHook(BaseHook):
    """Resolves the lake root. Stateless: builds a new path each call.

    :param url: lake root URL (default: CRISPFLOW_LAKE_URL, else `.crispflow/lake`)
    :param conn_id: Airflow connection for the object store (an aws connection for s3://)
    """

    conn_name_attr = "conn_id"
    hook_name = "crispflow lake"

    def __init__(self, url: str | None = None, conn_id: str | None = None) -> None:
        super().__init__()
        self.url = url
        self.conn_id = conn_id

    def get_lake(self) -> Lake:
        settings = Settings.from_env()
        url = self.url or settings.lake_url
        conn_id = self.conn_id or settings.lake_conn_id
        return Lake(object_path(url, conn_id))


def object_path(url: str, conn_id: str | None) -> ObjectStoragePath:
    """A root URL as an ObjectStoragePath, with its Airflow connection when there is one."""
    return ObjectStoragePath(url, conn_id=conn_id) if conn_id else ObjectStoragePath(url)
