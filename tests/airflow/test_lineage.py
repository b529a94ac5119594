"""OpenLineage from crispflow's operators: the dataset builders (`crispflow_airflow.lineage`) on the results the
operators return, each operator's `get_openlineage_facets_on_complete` as the provider's extractor calls it, and the
events' JSON. The demo's whole graph on a real stack: tests/integration/test_prod_local.py."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from crispflow_airflow import lineage
from crispflow_airflow.lineage import Lineage, Ref

LAKE = "s3://crispflow_lake@bucket/lake"
MLFLOW = "http://user:secret@127.0.0.1:5000/"
NS = "http://127.0.0.1:5000"
MODEL = "crispflow-lending_club"
REQUEST = {"pipeline": "lending_club", "dataset_version_id": "ds-0123456789abcdef"}


def names(refs: tuple[Ref, ...]) -> list[tuple[str, str, str | None]]:
    return [(r.namespace, r.name, r.version) for r in refs]


def test_lake_paths_follow_the_openlineage_naming_of_airflows_providers() -> None:
    assert lineage.lake_ref(LAKE, "raw/p/abc.csv", "abc") == Ref("s3://bucket", "lake/raw/p/abc.csv", "abc")
    assert lineage.lake_ref("s3://bucket", "/curated/p/ds-1/") == Ref("s3://bucket", "curated/p/ds-1")
    assert lineage.lake_ref("file:///home/me/.crispflow/lake", "batches/p/b-1", "b-1") == Ref(
        "file", "/home/me/.crispflow/lake/batches/p/b-1", "b-1")


@pytest.mark.parametrize(("uri", "namespace"), [
    (MLFLOW, NS),
    ("https://mlflow.example.com/prefix/?token=x#f", "https://mlflow.example.com/prefix"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_the_tracking_namespace_carries_no_credentials(uri: str, namespace: str) -> None:
    assert lineage.tracking_namespace(uri) == namespace


def test_ingest_reads_the_raw_landings_by_their_hash_and_writes_the_staged_batch() -> None:
    result = {"pipeline": "lending_club", "batch_id": "b-1", "rows_in": 3, "interval": {},
              "raw": ["raw/lending_club/aa11.csv", "raw/lending_club/bb22.jsonl"]}
    out = lineage.ingest(result, LAKE)
    assert names(out.inputs) == [("s3://bucket", "lake/raw/lending_club/aa11.csv", "aa11"),
                                 ("s3://bucket", "lake/raw/lending_club/bb22.jsonl", "bb22")]
    assert names(out.outputs) == [("s3://bucket", "lake/batches/lending_club/b-1", "b-1")]


def test_publish_register_and_bless_chain_batch_version_and_model() -> None:
    published = lineage.publish({"pipeline": "lending_club", "batch_id": "b-1", "created": True,
                                 "dataset_version_id": REQUEST["dataset_version_id"]}, LAKE)
    curated = ("s3://bucket", "lake/curated/lending_club/ds-0123456789abcdef", "ds-0123456789abcdef")
    assert names(published.inputs) == [("s3://bucket", "lake/batches/lending_club/b-1", "b-1")]
    assert names(published.outputs) == [curated] and published.outputs[0].change == "CREATE"

    registered = lineage.register(REQUEST, {"version": "3", "created": True}, MODEL, LAKE, MLFLOW)
    assert names(registered.inputs) == [curated]
    assert registered.outputs == (Ref(NS, f"models/{MODEL}/3", "3", "MODEL", "CREATE"),)

    first = lineage.bless(REQUEST, {"version": "3", "promotion": {"action": "champion", "version": "3"}}, MODEL,
                          LAKE, MLFLOW)
    assert names(first.inputs) == [curated, (NS, f"models/{MODEL}/3", "3")]
    assert names(first.outputs) == [(NS, f"models/{MODEL}/3", "3"), (NS, f"models/{MODEL}@champion", "3")]
    later = lineage.bless(REQUEST, {"version": "4", "promotion": {"action": "none"}}, MODEL, LAKE, MLFLOW)
    assert names(later.outputs) == [(NS, f"models/{MODEL}/4", "4")]


def test_alias_moves_are_edges_from_the_version_to_the_alias_and_a_removed_alias_is_dropped() -> None:
    moves = {"champion": ["3", "4"], "previous": [None, "3"], "canary": ["4", None]}
    out = lineage.alias_moves(MODEL, moves, MLFLOW)
    assert names(out.inputs) == [(NS, f"models/{MODEL}/4", "4"), (NS, f"models/{MODEL}/3", "3")]
    assert [(r.name, r.version, r.change) for r in out.outputs] == [
        (f"models/{MODEL}@canary", None, "DROP"), (f"models/{MODEL}@champion", "4", "OVERWRITE"),
        (f"models/{MODEL}@previous", "3", "OVERWRITE")]
    assert lineage.alias_moves(MODEL, None, MLFLOW) == Lineage()  # a canary analysis that let the canary run


def test_the_training_window_composes_its_parents_and_a_window_of_one_is_no_edge() -> None:
    result = {"conf": {"pipeline": "p", "dataset_version_id": "ds-c"}, "parents": ["ds-a", "ds-b"]}
    out = lineage.training_window(result, "s3://b")
    assert names(out.inputs) == [("s3://b", "curated/p/ds-a", "ds-a"), ("s3://b", "curated/p/ds-b", "ds-b")]
    assert names(out.outputs) == [("s3://b", "curated/p/ds-c", "ds-c")]
    assert lineage.training_window({**result, "parents": ["ds-c"]}, "s3://b").inputs == ()


def test_scores_drift_and_erasure() -> None:
    scored = lineage.scores({"pipeline": "p", "dataset_version_id": "ds-a", "model": MODEL, "model_version": "2",
                             "output": "scores/p/ds-a/v2", "created": True}, "s3://b", MLFLOW)
    assert names(scored.inputs) == [("s3://b", "curated/p/ds-a", "ds-a"), (NS, f"models/{MODEL}/2", "2")]
    assert names(scored.outputs) == [("s3://b", "scores/p/ds-a/v2", "ds-a.v2")]
    drifted = lineage.drift({"model": MODEL, "summaries": [{"alias": "champion", "version": "2"},
                                                           {"alias": "canary", "version": "3"}]}, MLFLOW)
    assert [r.name for r in drifted.inputs] == [f"models/{MODEL}/2", f"models/{MODEL}/3"] and not drifted.outputs
    erased = lineage.erasure({"pipeline": "p", "artifacts": [
        {"store": "curated", "version": "ds-a", "successor": "ds-b", "old": "aa", "new": "purged"},
        {"store": "holdout", "path": "holdouts/p/h1.parquet", "old": "h1", "new": "h2"},
        {"store": "raw", "path": "raw/p/x.csv", "old": "r1", "new": "r2"},
        {"store": "predictions", "path": "m/predictions/x.parquet", "old": "p1", "new": "p2"}]}, "s3://b")
    assert [(r.name, r.change) for r in erased.inputs] == [("curated/p/ds-a", None)]
    assert [(r.name, r.version, r.change) for r in erased.outputs] == [
        ("curated/p/ds-a", "ds-a", "DROP"), ("curated/p/ds-b", "ds-b", "CREATE"),
        ("holdouts/p/h1.parquet", "h1", "DROP"), ("holdouts/p/h2.parquet", "h2", "CREATE"),
        ("raw/p/x.csv", "r2", "OVERWRITE")]


def test_datasets_serialise_as_openlineage_json_with_their_facets() -> None:
    from openlineage.client.serde import Serde

    out = lineage.operator_lineage(lineage.alias_moves(MODEL, {"champion": ["3", "4"], "canary": ["4", None]},
                                                       MLFLOW))
    inputs = [json.loads(Serde.to_json(d)) for d in out.inputs]
    outputs = {d["name"]: d for d in (json.loads(Serde.to_json(d)) for d in out.outputs)}
    assert inputs[0]["facets"]["version"]["datasetVersion"] == "4"
    assert inputs[0]["facets"]["datasetType"]["datasetType"] == "MODEL"
    champion = outputs[f"models/{MODEL}@champion"]["facets"]
    assert champion["version"]["datasetVersion"] == "4" and champion["datasetType"]["subType"] == "ALIAS"
    assert champion["lifecycleStateChange"]["lifecycleStateChange"] == "OVERWRITE"
    assert outputs[f"models/{MODEL}@canary"]["facets"]["lifecycleStateChange"]["lifecycleStateChange"] == "DROP"
    assert all(d["facets"][k]["_schemaURL"].startswith("https://openlineage.io/spec/facets/")
               for d in (inputs[0], *outputs.values()) for k in d["facets"])


class FakeTI:
    """What the provider hands `get_openlineage_facets_on_complete`: a task instance whose XCom is the result."""

    def __init__(self, task_id: str, result: Any) -> None:
        self.task_id, self.result = task_id, result

    def xcom_pull(self, task_ids: str) -> Any:
        assert task_ids == self.task_id
        return self.result


def operators() -> list[tuple[Any, dict[str, Any], list[str], list[str]]]:
    """(operator, its result, input names, output names) for every operator that reports lineage."""
    from crispflow_airflow.operators.blessing import BlessingGateOperator
    from crispflow_airflow.operators.canary import CanaryAnalysisOperator
    from crispflow_airflow.operators.drift import DriftMonitorOperator
    from crispflow_airflow.operators.ingest import IngestOperator
    from crispflow_airflow.operators.promotion import DeployCanaryOperator, PromoteCanaryOperator, RollbackOperator
    from crispflow_airflow.operators.publish import PublishDatasetOperator
    from crispflow_airflow.operators.retrain import PlanRetrainOperator
    from crispflow_airflow.operators.scoring import CommitScoresOperator
    from crispflow_airflow.operators.training import RegisterChallengerOperator

    ds, curated = REQUEST["dataset_version_id"], f"lake/curated/lending_club/{REQUEST['dataset_version_id']}"
    ref = {"model": MODEL, "version": "2", "run_id": "r", "experiment_id": "1"}
    moves = {"champion": ["1", "2"], "canary": ["2", None], "previous": [None, "1"]}
    v1, v2, champion = f"models/{MODEL}/1", f"models/{MODEL}/2", f"models/{MODEL}@champion"
    aliases = [f"models/{MODEL}@canary", champion, f"models/{MODEL}@previous"]
    return [
        (IngestOperator(task_id="ingest", pipeline="lending_club"),
         {"pipeline": "lending_club", "batch_id": "b-1", "raw": ["raw/lending_club/aa.csv"]},
         ["lake/raw/lending_club/aa.csv"], ["lake/batches/lending_club/b-1"]),
        (PublishDatasetOperator(task_id="publish", pipeline="lending_club", batch_id="b-1"),
         {"pipeline": "lending_club", "batch_id": "b-1", "dataset_version_id": ds, "created": True},
         ["lake/batches/lending_club/b-1"], [curated]),
        (RegisterChallengerOperator(task_id="register", request=REQUEST, parent_run_id="p", results=[]),
         {"version": "2", "created": True, "mlflow": ref}, [curated], [v2]),
        (BlessingGateOperator(task_id="bless", request=REQUEST, version="2"),
         {"version": "2", "promotion": {"action": "champion"}, "mlflow": ref}, [curated, v2], [v2, champion]),
        (DeployCanaryOperator(task_id="deploy", pipeline="lending_club", version="2"),
         {"model": MODEL, "moves": {"canary": [None, "2"]}, "mlflow": ref}, [v2], [f"models/{MODEL}@canary"]),
        (PromoteCanaryOperator(task_id="promote", pipeline="lending_club", expected_canary="2",
                               expected_champion="1", reason="ten characters"),
         {"model": MODEL, "moves": moves}, [v2, v1], aliases),
        (RollbackOperator(task_id="rollback", pipeline="lending_club", reason="ten characters"),
         {"model": MODEL, "moves": {"champion": ["2", "1"]}}, [v1], [champion]),
        (CanaryAnalysisOperator(task_id="analyse", pipeline="lending_club"),
         {"decision": "promote", "ledger": {"moves": moves}}, [v2, v1], aliases),
        (CommitScoresOperator(task_id="commit", output_dir="scores/lending_club/x"),
         {"pipeline": "lending_club", "dataset_version_id": ds, "model": MODEL, "model_version": "2",
          "output": "scores/lending_club/x"}, [curated, v2], ["lake/scores/lending_club/x"]),
        (DriftMonitorOperator(task_id="drift", pipeline="lending_club"),
         {"model": MODEL, "summaries": [{"alias": "champion", "version": "2"}]}, [v2], []),
        (PlanRetrainOperator(task_id="resolve"),
         {"conf": {"pipeline": "lending_club", "dataset_version_id": ds}, "parents": ["ds-a", ds]},
         ["lake/curated/lending_club/ds-a"], [curated]),
    ]


def test_every_operator_reports_its_lineage_through_the_providers_extractor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's DefaultExtractor picks each operator's method (it swallows exceptions into None: so None
    here means a broken method); names come from the process's lake URL and tracking URI."""
    from airflow.providers.openlineage.extractors.base import DefaultExtractor

    monkeypatch.setenv("CRISPFLOW_LAKE_URL", "s3://bucket/lake")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", NS)
    for op, result, inputs, outputs in operators():
        found = DefaultExtractor(op).extract_on_complete(FakeTI(op.task_id, result))
        assert found is not None, op.task_id
        assert [d.name for d in found.inputs] == inputs, op.task_id
        assert [d.name for d in found.outputs] == outputs, op.task_id
        assert {d.namespace for d in (*found.inputs, *found.outputs)} <= {"s3://bucket", NS}, op.task_id
        # a failed or skipped task returned nothing: no datasets, no error
        assert DefaultExtractor(op).extract_on_complete(FakeTI(op.task_id, None)) is None


def test_importing_the_lineage_module_imports_no_openlineage() -> None:
    code = ("import sys, crispflow_airflow.lineage; "
            "print(sorted(m for m in sys.modules if m.startswith(('openlineage', 'airflow'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": "plugins:include"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
