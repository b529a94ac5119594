"""What every crispflow operator needs: the spec, the lake, the run's identity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crispflow.spec import load_spec

if TYPE_CHECKING:
    from airflow.sdk import Context

    from crispflow.lake import Lake
    from crispflow.spec import PipelineSpec


def spec_and_lake(pipeline: str) -> tuple[PipelineSpec, Lake]:
    from crispflow_airflow.hooks.lake import LakeHook

    return load_spec(pipeline), LakeHook().get_lake()



def training_job(request: dict[str, Any], context: Context) -> Any:
    """The `crispflow.model.modelling.Job` of a training run: spec, lake, MLflow client and the run key."""
    from crispflow.model.modelling import Job
    from crispflow_airflow.hooks.mlflow import MlflowHook

    spec, lake = spec_and_lake(request["pipeline"])
    ti = context["ti"]
    return Job(spec, lake, MlflowHook().get_client(), request["dataset_version_id"], f"{ti.dag_id}/{ti.run_id}")
