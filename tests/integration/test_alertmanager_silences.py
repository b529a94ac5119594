"""crispflow.monitoring.silences against the real Alertmanager binary (basic auth on, cluster off): a silence is
created with the one exact `dedup_key` matcher, the person and the comment; silencing again returns the same
silence; an alert with that key is suppressed by it (another key is not); expiring it lets a new one be created;
wrong credentials, no server, an unknown silence and bad input fail with typed errors that never echo a secret.

The `alertmanager` fixture (and `run_alertmanager`, usable outside pytest) is meant to move to tests/support."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.alertmanager import Alertmanager

from crispflow.monitoring.silences import (
    AlertmanagerAuthError,
    AlertmanagerError,
    InvalidSilence,
    SilenceNotFound,
    expire_silence,
    silence_alert,
)

# --- the tests ----------------------------------------------------------------------------------------------------


def new_key() -> str:
    return f"crispflow-t.champion-{uuid.uuid4().hex[:8]}-20260301T020000Z"


def post_alert(am: Alertmanager, key: str) -> None:
    now = datetime.now(UTC)
    am.api("POST", "alerts", json=[{
        "labels": {"alertname": "CrispflowDriftPersistent", "dedup_key": key, "model": "crispflow-t",
                   "alias": "champion", "severity": "warning", "team": "ml"},
        "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}])


def alert_status(am: Alertmanager, key: str, want: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The status of the alert with that key once its state is `want` (polled: the alert is ingested
    asynchronously); fails with the last status seen."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        found = am.api("GET", "alerts", params={"filter": f'dedup_key="{key}"'})
        if found:
            last = found[0]["status"]
            if last["state"] == want:
                return last
        time.sleep(0.1)
    raise AssertionError(f"alert {key}: state never became {want!r}; last status {last}")


def test_a_silence_is_created_once_and_suppresses_that_alert_only(alertmanager: Alertmanager) -> None:
    key, other = new_key(), new_key()
    first = silence_alert(alertmanager.url, key, created_by="ann", comment="looking at the income feed",
                          duration=timedelta(hours=2), auth=alertmanager.auth)
    assert first["created"] is True and first["id"]
    ends = datetime.fromisoformat(first["ends_at"].replace("Z", "+00:00"))
    assert timedelta(hours=1, minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=2)

    stored = alertmanager.api("GET", f"silence/{first['id']}")
    assert stored["matchers"] == [{"name": "dedup_key", "value": key, "isRegex": False, "isEqual": True}]
    assert (stored["createdBy"], stored["comment"], stored["status"]["state"]) == (
        "ann", "looking at the income feed", "active")

    again = silence_alert(alertmanager.url, key, created_by="bob", comment="me too", auth=alertmanager.auth)
    assert again == {"id": first["id"], "created": False, "ends_at": stored["endsAt"]}
    assert [s["id"] for s in alertmanager.api("GET", "silences")] == [first["id"]]  # nothing stacked

    post_alert(alertmanager, key)
    post_alert(alertmanager, other)
    assert alert_status(alertmanager, key, "suppressed")["silencedBy"] == [first["id"]]
    assert alert_status(alertmanager, other, "active")["silencedBy"] == []


def test_a_broader_silence_is_not_taken_for_ours_and_an_expired_one_is_replaced(alertmanager: Alertmanager) -> None:
    key = new_key()
    regex = alertmanager.api("POST", "silences", json={
        "matchers": [{"name": "dedup_key", "value": key, "isRegex": True, "isEqual": True}],
        "startsAt": datetime.now(UTC).isoformat(), "endsAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "createdBy": "someone", "comment": "a regex on the same text"})["silenceID"]
    ours = silence_alert(alertmanager.url, key, created_by="ann", comment="ack", auth=alertmanager.auth)
    assert ours["created"] is True and ours["id"] != regex

    expire_silence(alertmanager.url, ours["id"], auth=alertmanager.auth)
    expire_silence(alertmanager.url, ours["id"], auth=alertmanager.auth)  # expiring twice is a no-op
    assert alertmanager.api("GET", f"silence/{ours['id']}")["status"]["state"] == "expired"
    renewed = silence_alert(alertmanager.url, key, created_by="ann", comment="ack", auth=alertmanager.auth)
    assert renewed["created"] is True and renewed["id"] not in (ours["id"], regex)

    with pytest.raises(SilenceNotFound, match=r"alertmanager expire silence \(HTTP 500\): not found") as caught:
        expire_silence(alertmanager.url, str(uuid.uuid4()), auth=alertmanager.auth)
    assert caught.value.status == 500


def test_wrong_credentials_and_no_server_are_typed_errors_without_secrets(alertmanager: Alertmanager) -> None:
    key = new_key()
    for auth in [(alertmanager.user, "not-the-password"), None]:
        with pytest.raises(AlertmanagerAuthError, match=r"list silences \(HTTP 401\).*login and password") as c:
            silence_alert(alertmanager.url, key, created_by="ann", comment="ack", auth=auth)
        assert c.value.status == 401 and "not-the-password" not in str(c.value)
    assert alertmanager.api("GET", "silences") == []  # nothing created

    from support.servers import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AlertmanagerError, match=r"alertmanager list silences: no answer from http://127") as c:
        silence_alert(nowhere, key, created_by="ann", comment="ack", auth=alertmanager.auth, timeout=5)
    assert c.value.status is None and alertmanager.password not in str(c.value)

    with pytest.raises(InvalidSilence, match="base_url: must not contain credentials") as c:
        silence_alert(f"http://ann:{alertmanager.password}@127.0.0.1:1", key, created_by="ann", comment="ack")
    assert alertmanager.password not in str(c.value)


@pytest.mark.parametrize(("key", "rule"), [
    ("", "non-empty"), (None, "non-empty"), ('crispflow-t.a"b', "quotes"), ("crispflow-t.a'b", "quotes"),
    ("crispflow-t.a\nb", "newlines"), ("crispflow-t.a\\b", "backslashes"), (" crispflow-t.a", "surrounding"),
])
def test_a_bad_key_is_refused_before_anything_is_sent(key: Any, rule: str) -> None:
    with pytest.raises(InvalidSilence, match=f"dedup_key: .*{rule}"):
        silence_alert("http://127.0.0.1:1", key, created_by="ann", comment="ack")  # nothing listens there


def test_other_bad_input_names_the_field() -> None:
    key = new_key()
    with pytest.raises(InvalidSilence, match="created_by: must be a non-empty string"):
        silence_alert("http://127.0.0.1:1", key, created_by=" ", comment="ack")
    with pytest.raises(InvalidSilence, match="comment: must be a non-empty string"):
        silence_alert("http://127.0.0.1:1", key, created_by="ann", comment="")
    with pytest.raises(InvalidSilence, match="duration: must be a positive timedelta"):
        silence_alert("http://127.0.0.1:1", key, created_by="ann", comment="ack", duration=timedelta(0))
    with pytest.raises(InvalidSilence, match="base_url: must be an http"):
        silence_alert("ftp://127.0.0.1:1", key, created_by="ann", comment="ack")
    with pytest.raises(InvalidSilence, match=r"silence_id: '\.\./alerts' is not a silence id"):
        expire_silence("http://127.0.0.1:1", "../alerts")
