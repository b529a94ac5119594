"""RegisterChallengerOperator: fit the best configuration and register it as `challenger` in MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context


class RegisterChallengerOperator(BaseOperator):
    """Fit the best cross-validated configuration with calibration and threshold (or prediction interval) on all
    training rows and register it as `challenger` (`crispflow.model.modelling.register_challenger`); idempotent per
    run. Returns the version, its artifact hash and the selection, with the `mlflow` reference for the task's MLflow
    links; with `multiple_outputs=True` (the default here) each key is its own XCom, e.g. `op.output["version"]`.

    :param request: the training request (pipeline, dataset_version_id) (templated)
    :param parent_run_id: the MLflow parent run of the training (templated)
    :param results: the candidates' cross-validation results (templated; an XComArg of the mapped task)
    """

    template_fields: Sequence[str] = ("request", "parent_run_id", "results")
    ui_color = "#f3e8fd"

    def __init__(self, *, request: Any, parent_run_id: Any, results: Any, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.request = request
        self.parent_run_id = parent_run_id
        self.results = results

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.model.modelling import register_challenger
        from crispflow_airflow.jobs import training_job
        from crispflow_airflow.links import mlflow_ref

        with as_airflow_errors():
            job = training_job(self.request, context)
            registered = register_challenger(job, str(self.parent_run_id), list(self.results))
            return {**registered, "mlflow": mlflow_ref(job.mlf, job.model_name, registered["version"])}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the dataset version trained on → the registered model version (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, uri: lineage.register(
            self.request, result, result["mlflow"]["model"], lake, uri))
