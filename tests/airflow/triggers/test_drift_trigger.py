"""DriftTrigger: serialize round trip, fires on a drifting store, keeps polling otherwise, survives a restart."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crispflow.monitoring import store
from crispflow.monitoring.episodes import Decision, episode_record
from crispflow_airflow.triggers.drift import DriftTrigger

MODEL = "crispflow-demo"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def write(root: Path, i: int, share: float) -> None:
    status = "drift" if share >= 0.1 else "no_drift"
    drifted = ["int_rate"] if status == "drift" else []
    summary = {"model": MODEL, "alias": "champion", "version": "1",
               "window_start": (T0 + timedelta(hours=i)).isoformat(),
               "window_end": (T0 + timedelta(hours=i + 1)).isoformat(), "rows": 400, "labelled_rows": 0,
               "status": status, "drift": status == "drift", "drift_share": share, "drifted_features": drifted,
               "statistics": {f: {"test": "ks", "statistic": 0.3, "p_adjusted": 1e-9, "psi": 0.4} for f in drifted},
               "prediction_drift": False, "report": f"w{i}"}
    store.write_window(root, summary, {"status": status}, "<html></html>")


def trigger(root: Path, seconds: float, poll: float = 0.05) -> DriftTrigger:
    deadline = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
    return DriftTrigger(model=MODEL, root_url=root.as_uri(), conn_id=None, policy={"k": 2, "n": 3},
                        poll_interval=poll, deadline=deadline)


def restored(t: DriftTrigger) -> DriftTrigger:
    """What the triggerer does after a restart: import the class path, build it from the stored kwargs."""
    from airflow.sdk._shared.module_loading import import_string

    path, kwargs = t.serialize()
    return import_string(path)(**json.loads(json.dumps(kwargs)))


async def first_event(t: DriftTrigger) -> dict:
    async for event in t.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def test_serialize_round_trips_through_json(tmp_path: Path) -> None:
    t = trigger(tmp_path, 60)
    path, kwargs = t.serialize()
    assert path == "crispflow_airflow.triggers.drift.DriftTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert restored(t).serialize() == (path, kwargs)


def test_fires_at_once_on_a_store_with_persistent_drift(tmp_path: Path) -> None:
    for i, share in enumerate([0.0, 0.3, 0.3]):
        write(tmp_path, i, share)
    event = asyncio.run(first_event(trigger(tmp_path, 30)))
    assert event["status"] == "fire" and event["checks"] == 1
    decision = event["decision"]
    assert decision["episode_id"] == "champion-20260301T020000Z" and decision["reason"]["features"] == ["int_rate"]
    assert decision["reason"]["statistics"]["int_rate"]["psi"] == 0.4


def test_keeps_polling_without_drift_and_times_out(tmp_path: Path) -> None:
    for i, share in enumerate([0.0, 0.3, 0.0]):
        write(tmp_path, i, share)
    event = asyncio.run(first_event(trigger(tmp_path, 0.6)))
    assert event["status"] == "timeout" and event["checks"] >= 3
    assert event["decision"]["blocked_by"] == "no_episode"


def test_fires_when_drift_arrives_while_it_polls(tmp_path: Path) -> None:
    write(tmp_path, 0, 0.3)
    timer = threading.Timer(0.4, write, args=(tmp_path, 1, 0.3))
    timer.start()
    try:
        event = asyncio.run(first_event(trigger(tmp_path, 20)))
    finally:
        timer.join()
    assert event["status"] == "fire" and event["checks"] > 1
    assert event["decision"]["episode_id"] == "champion-20260301T010000Z"


def test_a_restarted_trigger_resumes_and_fires_exactly_once(tmp_path: Path) -> None:
    write(tmp_path, 0, 0.3)
    original = trigger(tmp_path, 20)

    async def killed_mid_wait() -> None:  # the triggerer stops: its trigger task is cancelled mid-poll
        task = asyncio.ensure_future(first_event(original))
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(killed_mid_wait())
    write(tmp_path, 1, 0.3)  # drift persists while the triggerer is down
    event = asyncio.run(first_event(restored(original)))
    assert event["status"] == "fire"
    decision = Decision(**event["decision"])
    # the sensor records the episode; any later restart (or second trigger) of that episode never fires again
    record = episode_record(decision, pipeline="demo", fired_at=datetime.now(UTC), fired_by={"run_id": "r1"})
    assert store.record_episode(tmp_path, MODEL, decision.episode_id, record)
    again = asyncio.run(first_event(restored(trigger(tmp_path, 0.4))))
    assert again["status"] == "timeout" and again["decision"]["blocked_by"] == "already_fired"


def test_without_a_root_url_the_settings_predictions_url_is_watched(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", tmp_path.as_uri())
    monkeypatch.delenv("CRISPFLOW_LAKE_CONN_ID", raising=False)
    for i, share in enumerate([0.3, 0.3]):
        write(tmp_path, i, share)
    t = DriftTrigger(model=MODEL, policy={"k": 2, "n": 3}, poll_interval=0.05,
                     deadline=(datetime.now(UTC) + timedelta(seconds=10)).isoformat())
    assert t.serialize()[1]["root_url"] is None and t.serialize()[1]["conn_id"] is None
    event = asyncio.run(first_event(restored(t)))
    assert event["status"] == "fire" and event["decision"]["episode_id"] == "champion-20260301T010000Z"


def test_a_broken_store_is_retried_until_the_deadline(tmp_path: Path) -> None:
    (tmp_path / MODEL / "drift" / "windows").mkdir(parents=True)
    (tmp_path / MODEL / "drift" / "windows" / "20260301T010000Z-champion.json").write_text("{not json")
    event = asyncio.run(first_event(trigger(tmp_path, 0.3)))
    assert event["status"] == "timeout" and event["decision"] is None and event["checks"] >= 2
