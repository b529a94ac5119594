"""IngestOperator: read every source of a pipeline for the run's interval, land raw bytes, stage one batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context


class IngestOperator(BaseOperator):
    """Extract → land raw → assemble and reconcile → stage. Returns a small dict (batch id, counts, the raw
    landings' lake keys).

    :param pipeline: name of the pipeline spec in include/pipelines (templated)
    :param start: first day of the interval, YYYY-MM-DD; empty = the run's data interval (templated)
    :param end: day after the interval, YYYY-MM-DD (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "start", "end")
    ui_color = "#e8f4fd"

    def __init__(self, *, pipeline: str, start: str | None = None, end: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.start = start
        self.end = end

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.data.datasets import stage
        from crispflow.data.extracts import assemble
        from crispflow.run_requests import resolve_interval
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.hooks.pseudonyms import pseudonymizer_for
        from crispflow_airflow.hooks.sources import extract

        with as_airflow_errors():
            interval = resolve_interval(self.start, self.end, context.get("data_interval_start"),
                                        context.get("data_interval_end"))
            spec, lake = load_spec(self.pipeline), LakeHook().get_lake()
            extracts = [extract(source, interval) for source in spec.sources]
            batch, report = assemble(spec, extracts, interval)
            report = stage(lake, spec, interval, extracts, batch, report, pseudonymizer_for(spec))
        self.log.info("staged batch %s of %s: %d rows from %d source(s) for %s", report["batch_id"], spec.name,
                      report["rows_in"], len(extracts), interval.to_json())
        return {"pipeline": spec.name, "batch_id": report["batch_id"], "rows_in": report["rows_in"],
                "interval": interval.to_json(), "raw": [info["raw"] for info in report["sources"]]}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the raw landings (named by their sha256) → the staged batch (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, _: lineage.ingest(result, lake))
