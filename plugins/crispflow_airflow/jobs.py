"""The library's jobs, built from a task's context: what the model-phase tasks hand to crispflow.model.modelling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

    from crispflow.model.modelling import TrainingJob


def training_job(request: dict[str, Any], context: Context) -> TrainingJob:
    """The `TrainingJob` of a training run: the request's spec, the lake, the MLflow client and the run key
    (`<dag_id>/<run_id>`, shared by every task of the run so a retry finds what the first try made)."""
    from crispflow.model.modelling import TrainingJob
    from crispflow.spec import load_spec
    from crispflow_airflow.hooks.lake import LakeHook
    from crispflow_airflow.hooks.mlflow import MlflowHook

    ti = context["ti"]
    return TrainingJob(load_spec(request["pipeline"]), LakeHook().get_lake(), MlflowHook().get_client(),
                       request["dataset_version_id"], f"{ti.dag_id}/{ti.run_id}")
