"""TriggerRunOperator: Airflow's TriggerDagRunOperator without its parse-time cost.

`airflow.providers.standard.operators.trigger_dagrun` imports Airflow's ORM models and SQLAlchemy (~1.3-2 s in a
fresh interpreter), which a DAG file must not pay at parse time. This operator takes the same arguments and, at
run time, hands the work to a TriggerDagRunOperator built with them, so the behaviour (run id, conf,
`skip_when_already_exists`, deferrable waiting, allowed/failed states) is exactly the provider's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class TriggerRunOperator(BaseOperator):
    """Trigger a run of another DAG (see the provider's TriggerDagRunOperator for the semantics).

    :param trigger_dag_id: the DAG to trigger
    :param trigger_run_id: the run id (templated); the same id twice finds the run already there
    :param conf: the run's conf (templated)
    :param wait_for_completion: wait until the run finishes (templated)
    :param skip_when_already_exists: a run with this id exists: skip instead of failing
    :param deferrable: wait in the triggerer
    :param poke_interval: seconds between checks of the run's state
    """

    template_fields: Sequence[str] = ("trigger_run_id", "conf", "wait_for_completion")
    ui_color = "#ffefeb"

    def __init__(self, *, trigger_dag_id: str, trigger_run_id: Any = None, conf: Any = None,
                 wait_for_completion: Any = False, skip_when_already_exists: bool = True, deferrable: bool = True,
                 poke_interval: int = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trigger_dag_id = trigger_dag_id
        self.trigger_run_id = trigger_run_id
        self.conf = conf
        self.wait_for_completion = wait_for_completion
        self.skip_when_already_exists = skip_when_already_exists
        self.deferrable = deferrable
        self.poke_interval = poke_interval

    def _provider(self) -> Any:
        from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

        return TriggerDagRunOperator(
            task_id=self.task_id, trigger_dag_id=self.trigger_dag_id, trigger_run_id=self.trigger_run_id,
            conf=self.conf, logical_date=None, wait_for_completion=bool(self.wait_for_completion),
            skip_when_already_exists=self.skip_when_already_exists, deferrable=self.deferrable,
            poke_interval=self.poke_interval, openlineage_inject_parent_info=False)

    def execute(self, context: Context) -> Any:
        return self._provider().execute(context)

    def execute_complete(self, context: Context, event: Any) -> Any:
        return self._provider().execute_complete(context, event)


def retrain(request: Any) -> TriggerRunOperator:
    """The `retrain` task of the retrain DAGs: the train_evaluate_register run `request` asks for (its `run_id` and
    `conf`), awaited in the triggerer; the same request again finds its run and skips."""
    return TriggerRunOperator(
        task_id="retrain",
        trigger_dag_id="train_evaluate_register",
        trigger_run_id=request["run_id"],
        conf=request["conf"],
        wait_for_completion=True,
        deferrable=True,
        poke_interval=10,  # the triggerer's check of the training run: a cheap query; 60 s left up to a minute idle
        skip_when_already_exists=True,
        execution_timeout=timedelta(hours=3),
    )
