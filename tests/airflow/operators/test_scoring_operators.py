"""PlanScoringOperator, ScorePartitionOperator, CommitScoresOperator: templated fields render, the XComs keep their
shapes (partitions to expand over, the `plan` summary, one part, the commit summary), typed errors fail without
retry (a real MLflow server, a local lake)."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from support.keys import session_keys
from threadpoolctl import threadpool_limits

from crispflow.data.datasets import load_batch, load_version, publish, store_outcome
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Interval
from crispflow.model import registry
from crispflow.model.features import build_preprocessor, features, labels
from crispflow.serving import batch_scoring as scoring
from crispflow.spec import load_spec

pytest_plugins = ["support.mlflow_server"]
PARAMS = {"pipeline": "lending_club", "dataset_version_id": "", "alias": "t_scoring_ops", "partition_rows": 1000}


@pytest.fixture
def published(mlflow_server, lake, stage_january, monkeypatch) -> tuple[str, registry.Registered]:
    """January published, and a model of it registered under the alias `t_scoring_ops`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    spec = load_spec("lending_club")
    batch_id = stage_january(lake)
    batch, ingest = load_batch(lake, spec.name, batch_id)
    outcome = validate_batch(spec, batch, Interval.from_json(ingest["interval"]), batch_id)
    store_outcome(lake, spec, batch_id, outcome, session_keys())
    version_id = publish(lake, spec, batch_id, {"dag_id": "t", "run_id": "r"}).version_id
    frame = load_version(lake, version_id, spec.name)
    with threadpool_limits(limits=1):
        model = Pipeline([("preprocess", build_preprocessor(spec)), ("model", LogisticRegression(max_iter=300))])
        model.fit(features(spec, frame), labels(spec, frame))
    mlf = registry.client(mlflow_server.url)
    run_id = registry.find_or_create_run(mlf, spec.name, "t/scoring_ops", "train")
    reg = registry.register(mlf, name=registry.model_name(spec.name), run_id=run_id, run_key="t/scoring_ops",
                            model=model, example=features(spec, frame).head(5), tags={"crispflow.threshold": "0.2"})
    registry.set_alias(mlf, registry.model_name(spec.name), PARAMS["alias"], reg.version)
    return version_id, reg


def plan_op(**kwargs):
    from crispflow_airflow.operators.scoring import PlanScoringOperator

    return PlanScoringOperator(task_id="plan", **{
        "pipeline": "{{ params.pipeline }}", "dataset_version_id": "{{ params.dataset_version_id }}",
        "alias": "{{ params.alias }}", "partition_rows": "{{ params.partition_rows }}", **kwargs})


def score_op(partition: dict, **kwargs):
    from crispflow_airflow.operators.scoring import ScorePartitionOperator

    return ScorePartitionOperator(task_id="score", output_dir="{{ params.output }}", partition=partition, **kwargs)


def commit_op(**kwargs):
    from crispflow_airflow.operators.scoring import CommitScoresOperator

    return CommitScoresOperator(task_id="commit", output_dir="{{ params.output }}", **kwargs)


def test_templated_fields_render() -> None:
    context = {"params": {**PARAMS, "dataset_version_id": "ds-0123456789abcdef", "output": "scores/x"},
               "results": [{"index": 0, "rows": 3}]}
    plan = plan_op()
    assert tuple(plan.template_fields) == ("pipeline", "dataset_version_id", "alias", "partition_rows")
    plan.render_template_fields(context)
    assert (plan.pipeline, plan.dataset_version_id, plan.alias, plan.partition_rows) == (
        "lending_club", "ds-0123456789abcdef", "t_scoring_ops", "1000")
    score = score_op({"index": 0, "start": 0, "stop": 10})
    assert tuple(score.template_fields) == ("output_dir",)
    score.render_template_fields(context)
    assert score.output_dir == "scores/x"
    commit = commit_op(results="{{ results }}")
    assert tuple(commit.template_fields) == ("output_dir", "results")
    commit.render_template_fields(context)
    assert commit.output_dir == "scores/x" and commit.results == "[{'index': 0, 'rows': 3}]"


def test_plan_score_commit(run_alone, lake, published) -> None:
    version_id, reg = published
    dr, ti = run_alone(plan_op, PARAMS)  # dataset version: the newest published
    assert dr.state == "success"
    partitions = ti.xcom_pull(task_ids="plan")
    summary = ti.xcom_pull(task_ids="plan", key="plan")
    assert set(summary) == {"pipeline", "dataset_version_id", "model", "model_version", "artifact_sha256", "rows",
                            "partitions", "output"}
    assert summary["dataset_version_id"] == version_id and summary["model_version"] == reg.version
    assert summary["output"] == f"scores/lending_club/{version_id}/v{reg.version}"
    assert len(partitions) == summary["partitions"] >= 1
    assert all(set(p) == {"index", "start", "stop"} for p in partitions)

    params = {**PARAMS, "output": summary["output"]}
    results = []
    for partition in partitions:
        dr, ti = run_alone(lambda p=partition: score_op(p), params)
        assert dr.state == "success"
        results.append(ti.xcom_pull(task_ids="score"))
    assert [set(r) for r in results] == [{"index", "rows", "file", "created"}] * len(partitions)
    assert all(r["created"] for r in results) and sum(r["rows"] for r in results) == summary["rows"]

    dr, ti = run_alone(lambda: commit_op(results=results), params)
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="commit")
    assert out == {"pipeline": "lending_club", "dataset_version_id": version_id, "model": reg.name,
                   "model_version": reg.version, "rows": summary["rows"], "output": summary["output"],
                   "rows_in": summary["rows"], "created": True, "event_emitted": True,
                   "manifest": f"{summary['output']}/{scoring.SUCCESS}"}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"partition_rows": "many"}, "InvalidRequest", "partition_rows: 'many' is not a whole number"),
        ({"dataset_version_id": "ds-nope"}, "InvalidRequest", "is not a dataset version id"),
        ({"alias": "no_such_alias"}, "ScoringFailed", "has no alias 'no_such_alias'"),
    ],
)
def test_plan_errors_fail_without_retry(published, kwargs, error, message) -> None:
    import crispflow_airflow.exceptions as exceptions

    op = plan_op(**kwargs)
    op.render_template_fields({"params": PARAMS})
    with pytest.raises(getattr(exceptions, error), match=message) as err:
        op.execute({})
    assert isinstance(err.value, exceptions.AirflowFailException)


def test_a_partition_outside_the_plan_is_refused(lake, published) -> None:
    from crispflow_airflow.exceptions import ScoringFailed

    version_id, _ = published
    spec = load_spec("lending_club")
    model = scoring.resolve_model(registry.client(), spec.name, PARAMS["alias"])
    plan = scoring.plan_partitions(lake, spec, version_id, model, 1000)["plan"]
    op = score_op({"index": 0, "start": 0, "stop": 7})
    op.render_template_fields({"params": {"output": plan["output"]}})
    with pytest.raises(ScoringFailed, match="is not in the plan"):
        op.execute({})
