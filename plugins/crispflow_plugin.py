"""The AirflowPlugin. Operators, hooks and sensors are imported from `crispflow_airflow` (Airflow 3 plugins do
not register them); this registers what must be registered: the crispflow pages (a FastAPI app at `/crispflow`,
built on its first request) and their entries in the UI (`external_views`)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from crispflow_airflow import listeners as run_notes_listener
from crispflow_airflow.links import GLOBAL_LINKS
from crispflow_airflow.ui.mount import PREFIX, LazyApp, external_views


class CrispflowPlugin(AirflowPlugin):
    name = "crispflow"
    fastapi_apps = [{"app": LazyApp("crispflow_airflow.ui.app:create_app"), "url_prefix": PREFIX,
                     "name": "crispflow"}]
    external_views = external_views()
    # MLflow links of the `@task` results that carry an `mlflow` reference (the api-server computes them); the
    # operators' own links are class attributes, stored when their task finishes (see crispflow_airflow.links)
    global_operator_extra_links = GLOBAL_LINKS
    listeners = [run_notes_listener]  # the note of a run that skipped its work says why
