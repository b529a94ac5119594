"""Drift monitoring: judge each served version's traffic in a window against that version's reference profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow.monitoring.monitor import MAX_WINDOW_MINUTES, MONITORED_ALIASES
from crispflow_airflow.context import run_window
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.links import CanaryDriftReportLink, DriftReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["MAX_WINDOW_MINUTES", "MONITORED_ALIASES", "DriftMonitorOperator"]


class DriftMonitorOperator(BaseOperator):
    """Compute drift for the champion and the live canary (if any) over the run's window of the prediction log.

    The window is the run's data interval; for runs without one, or when `window_minutes` is given, the
    `window_minutes` (default 60) before the interval's end (or `run_after`). The work is
    `crispflow.monitoring.monitor.monitor`: per alias the report JSON + HTML and the summary next to the
    prediction log, and the report as artifacts `drift/<window_key>-<alias>.json|.html` of the version's run.
    An empty window is an explicit "insufficient_data" summary. No champion yet: nothing to do. A version without
    a reference profile fails the task (GateConfigurationError, not retried) after the other aliases are stored.
    Returns the summaries (small) as XCom.

    :param pipeline: pipeline spec name (templated)
    :param window_minutes: length of the window for manual runs, or None for the data interval (templated)
    :param settings: a run's overrides of the spec's `drift_monitor:` thresholds, only towards more sensitive
        detection (`crispflow.policies.DRIFT_MONITOR`); a loosening value fails with InvalidRequest (templated)
    :param aliases: the serving aliases to judge
    """

    template_fields: Sequence[str] = ("pipeline", "window_minutes", "settings")
    ui_color = "#e3f2fd"
    operator_extra_links = (DriftReportLink(), CanaryDriftReportLink())

    def __init__(self, *, pipeline: str, window_minutes: Any = None, settings: Mapping[str, Any] | None = None,
                 aliases: Sequence[str] = MONITORED_ALIASES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.window_minutes = window_minutes
        self.settings = settings
        self.aliases = tuple(aliases)

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.model.registry import model_name
        from crispflow.monitoring import DriftSettings
        from crispflow.monitoring.monitor import monitor, window_length
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.mlflow import MlflowHook
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        with as_airflow_errors():
            settings = DriftSettings.of_spec(load_spec(str(self.pipeline)), self.settings)
            length = window_length(self.window_minutes)
            start, end = run_window(context, length or timedelta(hours=1))
            return monitor(MlflowHook().get_client(), PredictionStoreHook().get_root(), model_name(str(self.pipeline)),
                           start=start if length is None else end - length, end=end, settings=settings,
                           aliases=self.aliases)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the served model versions judged (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, _, uri: lineage.drift(result, uri))
