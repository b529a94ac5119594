"""PublishDatasetOperator: templated fields render, the XCom names the version, the run that publishes emits the
one asset event keyed `<pipeline>/<version>` (a rerun publishes and emits nothing), a batch that did not pass the
gate is a misconfiguration."""

from __future__ import annotations

from sqlalchemy import func, select
from support.keys import session_keys

from crispflow.data.datasets import read_manifest, store_outcome
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Interval
from crispflow.lake import read_json
from crispflow.spec import load_spec

PARAMS = {"pipeline": "lending_club", "batch_id": ""}


def gated(lake, batch_id: str) -> None:
    """The gate's stored outcome for a staged batch, as DataQualityGateOperator leaves it."""
    from crispflow.data.datasets import load_batch

    spec = load_spec("lending_club")
    batch, ingest = load_batch(lake, spec.name, batch_id)
    outcome = validate_batch(spec, batch, Interval.from_json(ingest["interval"]), batch_id)
    store_outcome(lake, spec, batch_id, outcome, session_keys())


def operator(**kwargs):
    from crispflow_airflow.operators.publish import PublishDatasetOperator

    return PublishDatasetOperator(task_id="publish", pipeline="{{ params.pipeline }}",
                                  batch_id="{{ params.batch_id }}", **kwargs)


def events() -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(AssetEvent)
                              .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                              .where(AssetModel.name == "crispflow_curated_dataset"))


def newest_event() -> tuple[str | None, dict, str]:
    """(partition key, extra, source run id) of the newest curated-dataset event."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        event = session.scalars(select(AssetEvent).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                                .where(AssetModel.name == "crispflow_curated_dataset")
                                .order_by(AssetEvent.id.desc()).limit(1)).one()
        return event.partition_key, dict(event.extra), event.source_run_id


def test_templated_fields_render() -> None:
    op = operator()
    assert tuple(op.template_fields) == ("pipeline", "batch_id")
    op.render_template_fields({"params": {"pipeline": "lending_club", "batch_id": "b-0123"}})
    assert (op.pipeline, op.batch_id) == ("lending_club", "b-0123")


def test_publishes_once_and_emits_one_event(run_alone, lake, stage_january) -> None:
    batch_id = stage_january(lake)
    gated(lake, batch_id)
    before = events()
    dr, ti = run_alone(operator, PARAMS, {"batch_id": batch_id})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="publish")
    assert set(out) == {"pipeline", "dataset_version_id", "batch_id", "rows", "spec_hash", "created",
                        "event_emitted", "manifest"}
    assert out["created"] and out["event_emitted"] and out["batch_id"] == batch_id
    manifest = read_manifest(lake, out["dataset_version_id"], "lending_club")
    assert read_json(lake.root / out["manifest"]) == manifest and manifest["rows"]["published"] == out["rows"]
    assert events() == before + 1
    key, extra, source_run = newest_event()
    assert key == f"lending_club/{out['dataset_version_id']}" and source_run == dr.run_id
    assert extra["pipeline"] == "lending_club" and extra["dataset_version_id"] == out["dataset_version_id"]

    dr, ti = run_alone(operator, PARAMS, {"batch_id": batch_id})  # another run, the same batch
    again = ti.xcom_pull(task_ids="publish")
    assert dr.state == "success" and again["dataset_version_id"] == out["dataset_version_id"]
    assert not again["created"] and not again["event_emitted"]
    assert events() == before + 1


def test_a_batch_that_did_not_pass_the_gate_is_refused_without_retry(run_alone, lake, stage_january) -> None:
    batch_id = stage_january(lake, lambda m: m.drop(columns=["int_rate"]))
    gated(lake, batch_id)
    before = events()
    dr, ti = run_alone(lambda: operator(retries=2), PARAMS, {"batch_id": batch_id})
    assert dr.state == "failed" and ti.state == "failed" and ti.try_number == 1  # GateConfigurationError: no retry
    assert events() == before
