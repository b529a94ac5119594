"""PlanRetrainOperator: validate a drift event and compose the training window a retrain runs on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context


class PlanRetrainOperator(BaseOperator):
    """Validate the run's drift events (its partition key, and the episode the sensor recorded in the monitoring
    store), then compose the curated versions ending within the run's `window_days` param into one version
    (`crispflow.monitoring.retrain.plan_retrain`). Returns the training run's `conf` and `run_id`, the episode and
    the composed version's `parents`; with `multiple_outputs=True` (the default here) each key is its own XCom.
    """

    ui_color = "#e3f2fd"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.monitoring.retrain import plan_retrain
        from crispflow.run_requests import check_partition
        from crispflow_airflow.context import run_identity, triggering_events
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        with as_airflow_errors():
            events = triggering_events(context)
            check_partition(context["dag_run"].partition_key, events, "episode_id")
            return plan_retrain(events, root=PredictionStoreHook().get_root(), lake=LakeHook().get_lake(),
                                window_days=context["params"]["window_days"], run=run_identity(context))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the curated versions of the window → the composed version (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, _: lineage.training_window(result, lake))
