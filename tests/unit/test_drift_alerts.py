"""Drift alerts (no Airflow): digest and severity, the exclusive claim in the store, acknowledgement, channels,
and `send_alert`'s once-per-channel delivery with a suppressed second sender."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispflow.errors import ParamsError
from crispflow.monitoring.alerts import (
    AlertAlreadyAcknowledged,
    AlertNotFound,
    acknowledge,
    alert_path,
    check_channels,
    claim,
    digest,
    read_alert,
    send_alert,
    severity,
    slack_payload,
)

MODEL = "crispflow-demo"
RECORD = {"model": MODEL, "pipeline": "demo", "alias": "champion", "episode_id": "champion-20260301T020000Z",
          "features": ["a", "b"], "statistics": {"a": {"psi": 0.2}}, "max_drift_share": 0.6,
          "prediction_drift": False, "windows": [{"drifted_features": ["a"]}, {"drifted_features": ["a", "b"]}]}


def test_alert_claims_are_exclusive_and_channels_are_validated(tmp_path: Path) -> None:
    record = {"model": MODEL, "pipeline": "demo", "alias": "champion", "episode_id": "champion-20260301T020000Z",
              "features": ["a", "b"], "statistics": {"a": {"psi": 0.2}}, "max_drift_share": 0.6,
              "prediction_drift": False, "windows": [{"drifted_features": ["a"]}, {"drifted_features": ["a", "b"]}]}
    assert [severity({**record, "max_drift_share": s}) for s in (0.1, 0.25, 0.5)] == ["warning", "high", "critical"]
    d = digest(record)
    assert d["severity"] == "critical" and [(g["feature"], g["windows"]) for g in d["groups"]] == [("a", 2), ("b", 1)]
    assert slack_payload(d)["text"] == d["title"]
    first = claim(tmp_path, MODEL, d, {"run_id": "r1"})
    assert first is not None and first["acknowledged"] is False
    assert claim(tmp_path, MODEL, d, {"run_id": "r2"}) is None  # another notifier: suppressed
    assert claim(tmp_path, MODEL, d, {"run_id": "r1"}) == first  # a retry of the first: resumes
    assert acknowledge(tmp_path, MODEL, d["dedup_key"], "ana", ref="t1")["acknowledged_by"] == "ana"
    assert acknowledge(tmp_path, MODEL, d["dedup_key"], "ana", ref="t1")["acknowledged_by"] == "ana"  # a retry
    with pytest.raises(AlertAlreadyAcknowledged, match="already acknowledged by ana at "):  # exclusive
        acknowledge(tmp_path, MODEL, d["dedup_key"], "bob", ref="t2")
    assert read_alert(tmp_path, MODEL, d["dedup_key"])["acknowledged_by"] == "ana"
    with pytest.raises(AlertNotFound, match="not the key"):  # never a path outside the model's alerts
        acknowledge(tmp_path, MODEL, f"{MODEL}./../x", "ana")
    with pytest.raises(AlertNotFound, match="dedup_key"):
        acknowledge(tmp_path, MODEL, "nope", "ana")
    assert check_channels('[{"kind": "email", "to": ["x@example.org"]}]')[0]["conn_id"] == "smtp_default"
    for bad, message in (({"kind": "pager"}, "kind"), ({"kind": "webhook"}, "conn_id"),
                         ({"kind": "email", "to": []}, "to"), ({"kind": "slack", "conn_id": "s", "x": 1}, "unknown")):
        with pytest.raises(ParamsError, match=message):
            check_channels([bad])


CHANNELS = [{"kind": "webhook", "conn_id": "hook"}, {"kind": "slack", "conn_id": "slack"},
            {"kind": "email", "conn_id": "smtp", "to": ["x@example.org"], "optional": True}]


def test_send_alert_delivers_each_channel_once_and_suppresses_a_second_sender(tmp_path: Path) -> None:
    delivered: list[tuple[str, str]] = []
    failing = {"slack:slack"}

    def deliver(channel: dict, d: dict) -> None:
        if channel["name"] in failing:
            raise ConnectionError("slack is down")
        delivered.append((channel["name"], d["dedup_key"]))

    def send(by: dict) -> dict:
        return send_alert(tmp_path, RECORD, CHANNELS, by=by, deliver=deliver, connection_exists=lambda c: c != "smtp")

    key = f"{MODEL}.{RECORD['episode_id']}"
    with pytest.raises(ConnectionError):
        send({"run_id": "r1"})
    assert delivered == [("webhook:hook", key)]
    assert read_alert(tmp_path, MODEL, key)["sent"] == ["webhook:hook"]
    assert alert_path(tmp_path, MODEL, key) == tmp_path / MODEL / "drift" / "alerts" / f"{key}.json"

    failing.clear()  # the retry re-sends only the channel that failed; the optional email has no connection
    out = send({"run_id": "r1"})
    assert out == {"sent": ["slack:slack"], "skipped": ["email:smtp"], "suppressed": False, "dedup_key": key,
                   "severity": "critical"}
    assert delivered == [("webhook:hook", key), ("slack:slack", key)]
    assert send({"run_id": "r2"}) == {"sent": [], "suppressed": True, "dedup_key": key}  # another run: nothing
    assert len(delivered) == 2


def test_send_alert_without_an_episode_sends_nothing_and_bad_channels_fail_first(tmp_path: Path) -> None:
    def deliver(channel: dict, d: dict) -> None:
        raise AssertionError("nothing may be delivered")

    assert send_alert(tmp_path, None, CHANNELS, by={}, deliver=deliver, connection_exists=bool) == {
        "sent": [], "suppressed": False, "dedup_key": None}
    with pytest.raises(ParamsError, match=r"alert_channels\[0\]: kind"):
        send_alert(tmp_path, RECORD, [{"kind": "pager"}], by={}, deliver=deliver, connection_exists=bool)
    assert not (tmp_path / MODEL).exists()  # nothing claimed
