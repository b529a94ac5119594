"""BlessingGateOperator: the statistical gate between a registered challenger and the champion (TFX-style verdict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.jobs import release_clients, training_job
from crispflow_airflow.links import MlflowModelVersionLink, MlflowRunLink, ModelCardLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class BlessingGateOperator(BaseOperator):
    """Judge a model version against the current champion on the frozen holdout and store the verdict.

    The verdict (blessed or not, with every check's evidence) is written as an MLflow artifact of the version's
    run and tagged on the version before anything acts on it. A blessed first model becomes `champion`; later
    blessed models keep `challenger` for the canary path; then the model card (Markdown and HTML) is rendered
    from the stored records and logged. "Not blessed" is a normal outcome (the task succeeds and says so); a
    gate that cannot run fails.

    :param request: the training request (pipeline, dataset_version_id) (templated)
    :param version: the registered model version to judge (templated)
    """

    template_fields: Sequence[str] = ("request", "version")
    ui_color = "#f3e8fd"
    operator_extra_links = (ModelCardLink(), MlflowModelVersionLink(), MlflowRunLink())

    def __init__(self, *, request: Any, version: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request
        self.version = version

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.model.blessing import verdict_summary
        from crispflow.model.fairness import fairness_summary
        from crispflow.model.modelling import bless, write_model_card
        from crispflow.release.promotion import promote_first_blessed
        from crispflow_airflow.context import acting_person
        from crispflow_airflow.links import mlflow_ref

        with as_airflow_errors():
            job = training_job(self.request, context)
            verdict = bless(job, str(self.version))
            self.log.info("verdict for %s v%s: %s", job.model_name, self.version, verdict_summary(verdict))
            _, ledger, _ = release_clients(job.spec.name)
            action = promote_first_blessed(job.mlf, ledger, job.model_name, str(self.version), run_key=job.run_key,
                                           person=acting_person(context))
            card = write_model_card(job, str(self.version))
            ref = mlflow_ref(job.mlf, job.model_name, str(self.version))
        self.log.info("promotion: %s; model card: %s", action, card["html"])
        return {"version": str(self.version), "blessed": verdict["blessed"], "mode": verdict["mode"],
                "reasons": verdict["reasons"], "warnings": verdict.get("warnings", []),
                "fairness": fairness_summary(verdict), "promotion": action, "model_card": card, "mlflow": ref}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the dataset version and the model version judged → the verdict on the version (and
        `champion`, for a first blessed model) (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, uri: lineage.bless(
            self.request, result, result["mlflow"]["model"], lake, uri))
