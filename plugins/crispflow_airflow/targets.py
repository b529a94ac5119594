"""Which pipelines a monitoring run acts on: the one a manual run names, else every pipeline being served."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context

SERVED_ALIAS = "champion"


def served_pipelines(context: Context) -> list[str]:
    """The run's `pipeline` param if set (a manual run), else every spec in the pipelines folder whose registered
    model has a `champion` (`crispflow.run_requests.target_pipelines`). The monitoring task is mapped over the
    result: one task instance per pipeline, never two pipelines in one. Unknown conf keys are rejected before any
    crispflow task runs (`dag_defaults.reject_unknown_conf`)."""
    from crispflow.model.registry import alias_version, model_name
    from crispflow.run_requests import target_pipelines
    from crispflow.spec import list_specs
    from crispflow_airflow.hooks.mlflow import MlflowHook

    with as_airflow_errors():
        requested = context["params"].get("pipeline")
        if requested:
            return target_pipelines(requested, [], lambda _: True)
        mlf = MlflowHook().get_client()
        return target_pipelines(None, list_specs(),
                                lambda name: alias_version(mlf, model_name(name), SERVED_ALIAS) is not None)
