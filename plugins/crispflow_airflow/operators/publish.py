"""PublishDatasetOperator: publish a validated batch as a content-addressed dataset version, emit its event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.assets import CURATED_DATASET, emit_once
from crispflow_airflow.context import run_identity
from crispflow_airflow.exceptions import as_airflow_errors
from crispflow_airflow.links import DataDocsLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class PublishDatasetOperator(BaseOperator):
    """Publish once: same content → same version id, and one asset event, from the run that published it.

    Concurrent runs are safe: the manifest is created exclusively, so exactly one run publishes a version. The
    event is `crispflow_curated_dataset` with partition key `<pipeline>/<dataset_version_id>`: it starts one
    training run of exactly this version (see `crispflow_airflow.assets`).

    :param pipeline: pipeline spec name (templated)
    :param batch_id: a batch that passed the gate (templated)
    """

    template_fields: Sequence[str] = ("pipeline", "batch_id")
    ui_color = "#e9f7ec"
    operator_extra_links = (DataDocsLink(),)

    def __init__(self, *, pipeline: str, batch_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [CURATED_DATASET])
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.batch_id = batch_id

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.data.datasets import publish
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.lake import LakeHook

        run = run_identity(context)
        with as_airflow_errors():
            spec, lake = load_spec(self.pipeline), LakeHook().get_lake()
            result = publish(lake, spec, self.batch_id, {k: run[k] for k in ("dag_id", "run_id")})
        manifest = result.manifest
        extra = {"pipeline": spec.name, "dataset_version_id": result.version_id, "batch_id": self.batch_id,
                 "rows": manifest["rows"]["published"], "spec_hash": manifest["spec_hash"]}
        ours = emit_once(context, manifest["published_by"], extra, asset=CURATED_DATASET, pipeline=spec.name,
                         item=result.version_id)
        if ours:
            self.log.info("published %s (%d rows)", result.version_id, extra["rows"])
        else:
            self.log.info("%s was already published by %s; no new event", result.version_id,
                          manifest["published_by"]["run_id"])
        return {**extra, "created": result.created, "event_emitted": ours,
                "manifest": lake.relative(lake.manifest(spec.name, result.version_id))}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the gated batch → the dataset version (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, _: lineage.publish(result, lake))
