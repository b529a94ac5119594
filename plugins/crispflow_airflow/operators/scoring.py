"""Batch scoring operators: plan partitions → score each partition (mapped, any worker) → commit once.

Thin shells around crispflow.serving.batch_scoring. XCom carries the output folder key and small dicts; each mapped
task reads the plan from the lake, loads the pinned model version from the registry (hash-checked) and writes one part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.assets import BATCH_SCORES, emit_once
from crispflow_airflow.context import run_identity
from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context

PLAN_KEY = "plan"  # XCom key of the plan summary (the return value is the list of partitions, for .expand)


class PlanScoringOperator(BaseOperator):
    """Resolve the dataset version (default: the newest published) and pin the alias's model version, then plan
    the row-range partitions from the Parquet footer. Returns the partitions (a list of {index, start, stop})
    to `.expand` over; pushes a summary (output folder, dataset and model version, rows) under the XCom key `plan`.

    :param pipeline: pipeline spec name (templated)
    :param dataset_version_id: curated dataset version; empty: the newest published one (templated)
    :param alias: registry alias of the model to score with (templated)
    :param partition_rows: most rows per partition (templated; a whole number)
    """

    template_fields: Sequence[str] = ("pipeline", "dataset_version_id", "alias", "partition_rows")
    ui_color = "#fdf5e8"

    def __init__(self, *, pipeline: str, dataset_version_id: str | None, alias: str, partition_rows: Any,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.dataset_version_id = dataset_version_id
        self.alias = alias
        self.partition_rows = partition_rows

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from crispflow.errors import ParamsError
        from crispflow.run_requests import VERSION_ID
        from crispflow.serving.batch_scoring import newest_version, plan_partitions, resolve_model
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.hooks.mlflow import MlflowHook

        with as_airflow_errors():
            try:
                rows = int(str(self.partition_rows))
            except ValueError:
                raise ParamsError(f"partition_rows: {self.partition_rows!r} is not a whole number") from None
            spec, lake = load_spec(self.pipeline), LakeHook().get_lake()
            version_id = (self.dataset_version_id or "").strip() or newest_version(lake, spec.name)
            if not VERSION_ID.match(version_id):
                raise ParamsError(f"dataset_version_id: {version_id!r} is not a dataset version id (ds-<16 hex>)")
            model = resolve_model(MlflowHook().get_client(), spec.name, self.alias)
            planned = plan_partitions(lake, spec, version_id, model, rows)
        plan = planned["plan"]
        self.log.info("%s plan for %s on %s v%s (%s): %d rows in %d partition(s) -> %s",
                      "new" if planned["created"] else "existing", version_id, model.name, model.version,
                      model.alias, plan["rows"], len(plan["partitions"]), plan["output"])
        if plan["partition_rows"] != rows:
            self.log.info("kept the stored plan's partition_rows=%d (asked %d): outputs never mix plans",
                          plan["partition_rows"], rows)
        context["ti"].xcom_push(key=PLAN_KEY, value={
            "pipeline": spec.name, "dataset_version_id": version_id, "model": model.name,
            "model_version": model.version, "artifact_sha256": model.artifact_sha256, "rows": plan["rows"],
            "partitions": len(plan["partitions"]), "output": plan["output"]})
        return plan["partitions"]


class ScorePartitionOperator(BaseOperator):
    """Score one planned partition (meant to be mapped with `.expand(partition=...)`).

    Reads only the partition's row range, loads the pinned model version from the registry after its hash
    check (only if the part is not already written), scores in cache-sized chunks and creates
    `part-<index>.parquet` once.

    :param output_dir: the output folder key returned by the plan task (templated)
    :param partition: {index, start, stop} from the plan
    :param chunk_rows: rows per predict_proba call
    """

    template_fields: Sequence[str] = ("output_dir",)
    ui_color = "#fdf5e8"

    def __init__(self, *, output_dir: str, partition: dict[str, Any], chunk_rows: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output_dir = output_dir
        self.partition = partition
        self.chunk_rows = chunk_rows

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.serving.batch_scoring import DEFAULT_CHUNK_ROWS, ModelRef, load_model, read_plan, score_partition
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.hooks.mlflow import MlflowHook

        with as_airflow_errors():
            lake = LakeHook().get_lake()
            plan = read_plan(lake, self.output_dir)
            spec = load_spec(plan["pipeline"])
            model = ModelRef.from_json(plan["model"])
            result = score_partition(lake, spec, plan, dict(self.partition),
                                     lambda: load_model(MlflowHook().get_client(), model),
                                     chunk_rows=self.chunk_rows or DEFAULT_CHUNK_ROWS)
        self.log.info("partition %s: %d rows %s %s", result["index"], result["rows"],
                      "scored into" if result["created"] else "already in", result["file"])
        return result


class CommitScoresOperator(BaseOperator):
    """Check every part against the plan (rows in == rows scored) and create the `_SUCCESS` manifest once;
    the run that committed emits the `crispflow_batch_scores` asset event with ids and counts in `extra`, partition
    key `<pipeline>/<dataset_version_id>.v<model_version>`.

    :param output_dir: the output folder key returned by the plan task (templated)
    :param results: the mapped scoring tasks' results, cross-checked against the files (templated; an XComArg)
    """

    template_fields: Sequence[str] = ("output_dir", "results")
    ui_color = "#e9f7ec"

    def __init__(self, *, output_dir: str, results: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [BATCH_SCORES])
        super().__init__(**kwargs)
        self.output_dir = output_dir
        self.results = results

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.serving.batch_scoring import SUCCESS, commit
        from crispflow_airflow.hooks.lake import LakeHook

        run = run_identity(context)
        reported = None if self.results is None else [dict(r) for r in self.results]
        with as_airflow_errors():
            lake = LakeHook().get_lake()
            out = commit(lake, self.output_dir, {k: run[k] for k in ("dag_id", "run_id")}, reported)
        manifest = out["manifest"]
        extra = {"pipeline": manifest["pipeline"], "dataset_version_id": manifest["dataset_version_id"],
                 "model": manifest["model"]["name"], "model_version": manifest["model"]["version"],
                 "rows": manifest["rows"]["scored"], "output": self.output_dir}
        ours = emit_once(context, manifest["committed_by"], extra, asset=BATCH_SCORES, pipeline=manifest["pipeline"],
                         item=f"{manifest['dataset_version_id']}.v{manifest['model']['version']}")
        if ours:
            self.log.info("committed %s: %d rows scored of %d", self.output_dir, manifest["rows"]["scored"],
                          manifest["rows"]["in"])
        else:
            self.log.info("%s was already committed by %s; no new event", self.output_dir,
                          manifest["committed_by"]["run_id"])
        return {**extra, "rows_in": manifest["rows"]["in"], "created": out["created"], "event_emitted": ours,
                "manifest": f"{self.output_dir}/{SUCCESS}"}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the dataset version and the pinned model version → the scores (`crispflow_airflow.lineage`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, uri: lineage.scores(result, lake, uri))
