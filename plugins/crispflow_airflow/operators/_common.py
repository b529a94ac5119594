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


def run_identity(context: Context) -> dict[str, Any]:
    """Who did it: recorded in manifests and registry tags for lineage."""
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "try_number": ti.try_number}
