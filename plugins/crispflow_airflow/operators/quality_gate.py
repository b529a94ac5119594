"""DataQualityGateOperator: a real Great Expectations checkpoint over a staged batch; stores, then decides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.links import DataDocsLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class DataQualityGateOperator(BaseOperator):
    """Validate a staged batch against expectations generated from the spec.

    Quarantine, GX results (JSON, PII redacted) and the Data Docs page are written first; then a batch-level
    failure raises `DataQualityFailed` and a broken gate raises `GateConfigurationError` (neither is retried).

    :param pipeline: pipeline spec name (templated)
    :param batch_id: the staged batch to validate (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "batch_id")
    ui_color = "#fdf3e8"
    operator_extra_links = (DataDocsLink(),)

    def __init__(self, *, pipeline: str, batch_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.batch_id = batch_id

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.data.datasets import load_batch, store_outcome
        from crispflow.data.quality import validate_batch
        from crispflow.data.sources import Interval
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.hooks.pseudonyms import pseudonymizer_for

        with as_airflow_errors():
            spec, lake = load_spec(self.pipeline), LakeHook().get_lake()
            batch, ingest = load_batch(lake, spec.name, self.batch_id)
            outcome = validate_batch(spec, batch, Interval.from_json(ingest["interval"]), self.batch_id)
            summary = store_outcome(lake, spec, self.batch_id, outcome, pseudonymizer_for(spec))
            self.log.info("gate on %s: %d in, %d passed, %d quarantined; reasons %s; report %s", self.batch_id,
                          summary["rows_in"], summary["rows_passed"], summary["rows_quarantined"],
                          summary["reasons"], summary["files"]["quality_html"])
            if outcome.failure is not None:
                raise outcome.failure
        return {k: summary[k] for k in ("batch_id", "success", "rows_in", "rows_passed", "rows_quarantined",
                                        "files")}
