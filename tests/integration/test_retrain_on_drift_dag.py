"""watch_drift and retrain_on_drift through Airflow (`dag.test()`): one asset event and one alert digest per drift
episode, delivered to a real loopback webhook; a forged event is refused; a valid one queues one training run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from crispflow.lake import Lake, canonical_json, frame_digest, write_atomic, write_parquet
from crispflow.monitoring import store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "lending_club"
MODEL = f"crispflow-{PIPELINE}"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
CHANNEL = {"kind": "webhook", "conn_id": "crispflow_alerts_webhook", "endpoint": "/hooks/drift"}


class Receiver:
    """A loopback webhook receiver: records every POSTed JSON body (the project's JSON server only serves GET)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def conn(self) -> str:
        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.httpd.server_address[1],
                           "schema": "http"})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.httpd.shutdown()
    r.httpd.server_close()


@pytest.fixture
def env(airflow_db, tmp_path, monkeypatch, receiver):
    lake = tmp_path / "lake"
    predictions = tmp_path / "predictions"
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", lake.as_uri())
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", predictions.as_uri())
    monkeypatch.setenv("AIRFLOW_CONN_CRISPFLOW_ALERTS_WEBHOOK", receiver.conn())
    # the registry and ledger `aliases_agree` compares: this test's own (never a stack running on this machine)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CRISPFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    pipelines = tmp_path / "pipelines"  # the alert channel comes from the spec (a run cannot redirect alerts)
    pipelines.mkdir()
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / f"{PIPELINE}.yaml").read_text())
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump({**spec, "alerts": {"channels": [CHANNEL]}}))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(pipelines))
    return Lake(lake), predictions


def window(i: int, share: float) -> dict:
    status = "drift" if share >= 0.1 else "no_drift"
    drifted = ["int_rate", "annual_inc"] if status == "drift" else []
    return {"model": MODEL, "alias": "champion", "version": "3",
            "window_start": (T0 + timedelta(hours=i)).isoformat(),
            "window_end": (T0 + timedelta(hours=i + 1)).isoformat(), "rows": 400, "labelled_rows": 50,
            "status": status, "drift": status == "drift", "drift_share": share, "drifted_features": drifted,
            "statistics": {f: {"test": "ks", "statistic": 0.3, "p_adjusted": 1e-9, "psi": 0.4} for f in drifted},
            "prediction_drift": False, "report": f"reports/champion/{i}/report.json"}


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors
    return bag.dags[dag_id]


CONF = {"pipeline": PIPELINE, "policy": {}}


def watch(timeout_s: float = 2.0):
    d = dag("watch_drift")
    sensor = d.get_task("watch")
    sensor.poke_interval, sensor.timeout = 0.2, timeout_s  # minutes in production
    dr = d.test(run_conf=CONF)
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


def drift_events() -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(select(AssetEvent).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                         .where(AssetModel.name == "crispflow_drift_detected").order_by(AssetEvent.id)).all()
        s.expunge_all()
        return rows


def test_one_event_and_one_digest_per_episode(env, receiver) -> None:
    _, predictions = env
    before = len(drift_events())
    store.write_window(predictions, window(0, 0.0), {}, "")
    store.write_window(predictions, window(1, 0.3), {}, "")
    # the second hot window arrives while the sensor waits: the wait is deferred to the (inline) trigger
    timer = threading.Timer(1.0, store.write_window, args=(predictions, window(2, 0.4), {}, ""))
    timer.start()
    dr, tis = watch(timeout_s=30)
    timer.join()
    assert dr.state == "success", {k: ti.state for k, ti in tis.items()}
    assert tis["watch"].state == "success" and tis["alert"].state == "success"
    events = drift_events()
    assert len(events) == before + 1
    extra = events[-1].extra
    assert extra["episode_id"] == "champion-20260301T020000Z" and extra["model"] == MODEL
    assert extra["features"] == ["int_rate", "annual_inc"] and extra["statistics"]["int_rate"]["psi"] == 0.4
    assert [w["window_end"] for w in extra["windows"]] == [window(i, 0)["window_end"] for i in (1, 2)]
    assert events[-1].source_dag_id == "watch_drift" and events[-1].source_run_id == dr.run_id
    recorded = store.read_episodes(predictions, MODEL)
    assert [r["episode_id"] for r in recorded] == [extra["episode_id"]]

    assert len(receiver.posts) == 1
    path, headers, body = receiver.posts[0]
    assert path == "/hooks/drift" and headers["Idempotency-Key"] == f"{MODEL}.champion-20260301T020000Z"
    assert body["dedup_key"] == headers["Idempotency-Key"] and body["severity"] == "high"  # share 0.4
    assert [g["feature"] for g in body["groups"]] == ["annual_inc", "int_rate"]
    assert all(g["windows"] == 2 for g in body["groups"])
    alert = json.loads((predictions / MODEL / "drift" / "alerts" / f"{body['dedup_key']}.json").read_text())
    assert alert["acknowledged"] is False and alert["sent"] == ["webhook:crispflow_alerts_webhook"]

    # Drift persists: the next runs check again, find the episode fired, and emit and send nothing.
    store.write_window(predictions, window(3, 0.5), {}, "")
    dr2, tis2 = watch()
    assert dr2.state == "success" and tis2["watch"].state == "skipped" and tis2["alert"].state == "skipped"
    assert len(drift_events()) == before + 1 and len(receiver.posts) == 1

    from crispflow.monitoring.alerts import acknowledge

    acked = acknowledge(predictions, MODEL, body["dedup_key"], by="on-call")
    assert acked["acknowledged"] and acked["acknowledged_by"] == "on-call"


class Attached(list):
    """The AssetEvent rows to attach to the next run, and its partition key (None: a run without one)."""

    key: str | None = None


@pytest.fixture
def with_events(monkeypatch) -> Attached:
    """dag.test() makes a manual run; the scheduler would make a partitioned asset-triggered run (its key, its
    events). Do the same: give the run dag.test() creates the partition key and attach the given AssetEvent rows."""
    import airflow.models.dagrun as dagrun

    attached = Attached()
    original = dagrun.get_or_create_dagrun

    def create(**kwargs):
        from airflow.models.asset import AssetEvent

        session = kwargs["session"]
        dr = original(**kwargs)
        dr.consumed_asset_events.extend(session.get(AssetEvent, e.id) for e in attached)
        dr.partition_key = attached.key
        session.commit()
        return dr

    monkeypatch.setattr(dagrun, "get_or_create_dagrun", create)
    return attached


def forge(extra: dict):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        asset = s.scalar(select(AssetModel).where(AssetModel.name == "crispflow_drift_detected"))
        event = AssetEvent(asset_id=asset.id, extra=extra, source_dag_id="someone_else")
        s.add(event)
        s.flush()
        s.expunge(event)
        return event


def publish_manifest(lake: Lake, version: str, rows: int, end: str) -> None:
    """A published version as the lake records it: the first `rows` rows of the demo data and their manifest."""
    import pandas as pd

    frame = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet").head(rows)
    data = lake.version_dir(PIPELINE, version) / "data.parquet"
    write_parquet(data, frame)
    manifest = {"dataset_version_id": version, "pipeline": PIPELINE, "content_sha256": frame_digest(frame),
                "rows": {"published": rows}, "interval": {"start": "2026-01-01T00:00:00+00:00", "end": end},
                "sources": [], "files": {"data": lake.relative(data)},
                "published_by": {"at": datetime.now(UTC).isoformat()}}
    write_atomic(lake.manifest(PIPELINE, version), canonical_json(manifest))


def retrain():
    d = dag("retrain_on_drift")
    d.get_task("retrain").wait_for_completion = False  # dag.test() only queues the target run: nothing to wait for
    dr = d.test()
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


def test_retrain_refuses_forged_events_and_queues_one_training_run_per_episode(env, receiver, with_events,
                                                                               capfd) -> None:
    lake, predictions = env
    min_rows = yaml.safe_load((ROOT / "include" / "pipelines" / f"{PIPELINE}.yaml").read_text())["training"][
        "min_rows"]
    publish_manifest(lake, "ds-00000000000000aa", min_rows + 5000, "2026-10-01T00:00:00+00:00")
    publish_manifest(lake, "ds-00000000000000bb", min_rows - 1, "2026-11-01T00:00:00+00:00")  # newer, small alone
    for i, share in enumerate([0.3, 0.3]):
        store.write_window(predictions, window(i, share), {}, "")
    dr, tis = watch()
    assert tis["watch"].state == "success"
    real = drift_events()[-1]
    extra = dict(real.extra)
    assert real.partition_key == f"{PIPELINE}/{extra['episode_id']}"  # one retrain run per pipeline and episode

    # no event at all (a manual run), then forged events: the resolve step fails without retries
    cases = {"none arrived": [],
             "was never recorded by the drift sensor": [forge({**extra, "episode_id": "champion-20990101T000000Z"})],
             "features ['int_rate'] does not match the recorded episode": [forge({**extra, "features": ["int_rate"]})],
             "model None is not the model of pipeline": [forge({"pipeline": PIPELINE})]}
    for message, attached in cases.items():
        with_events[:] = attached
        capfd.readouterr()
        dr, tis = retrain()
        assert dr.state == "failed" and tis["resolve"].state == "failed" and tis["retrain"].state != "success"
        assert tis["resolve"].try_number == 1  # InvalidRequest: not retried
        out = capfd.readouterr()
        assert "InvalidRequest: invalid request: drift event: " in out.out + out.err and message in out.out + out.err

    # the real event in a run of another pipeline's (or episode's) partition: refused, nothing is trained
    with_events[:], with_events.key = [real], f"other_pipeline/{extra['episode_id']}"
    capfd.readouterr()
    dr, tis = retrain()
    assert dr.state == "failed" and tis["resolve"].state == "failed" and tis["resolve"].try_number == 1
    out = capfd.readouterr()
    assert "does not match the run's partition key 'other_pipeline/" in out.out + out.err

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with_events[:], with_events.key = [real], real.partition_key
    dr, tis = retrain()
    assert dr.state == "success", {k: ti.state for k, ti in tis.items()}
    resolved = tis["resolve"].xcom_pull(task_ids="resolve")
    from crispflow.data.datasets import read_manifest

    composed = read_manifest(lake, resolved["conf"]["dataset_version_id"], PIPELINE)  # both versions, composed
    assert composed["parents"] == ["ds-00000000000000aa", "ds-00000000000000bb"]
    assert composed["rows"]["published"] == min_rows + 5000  # the small one's rows are all in the big one
    run_id = f"drift__{MODEL}__{extra['episode_id']}"
    with create_session() as s:
        queued = s.scalars(select(DagRun).where(DagRun.dag_id == "train_evaluate_register",
                                                DagRun.run_id == run_id)).all()
        assert len(queued) == 1 and queued[0].conf == resolved["conf"] and queued[0].state == "queued"

    # the same episode again (a duplicate event): coalesced into the existing training run
    dr, tis = retrain()
    assert dr.state == "success" and tis["retrain"].state == "skipped"
    with create_session() as s:
        assert len(s.scalars(select(DagRun).where(DagRun.dag_id == "train_evaluate_register",
                                                  DagRun.run_id == run_id)).all()) == 1
