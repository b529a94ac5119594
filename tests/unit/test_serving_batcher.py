"""The scoring thread of the model server (crispflow.serving.batcher): requests that arrive while it is busy are
scored together, in order, each with its own outcome; request ids are version-4 UUIDs."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from crispflow.serving.batcher import Arrival, Batcher, request_ids


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = request_ids(500)
    assert len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    assert request_ids(0) == []


def test_requests_waiting_for_a_busy_model_are_scored_as_one_batch() -> None:
    busy, release = threading.Event(), threading.Event()
    batches: list[list[bytes]] = []

    def score(arrivals: list[Arrival]) -> list[dict[str, Any] | Exception]:
        batches.append([body for body, _, _ in arrivals])
        if len(batches) == 1:
            busy.set()
            assert release.wait(10)
        return [{"body": body.decode()} if body != b"bad" else ValueError("bad input") for body, _, _ in arrivals]

    batcher = Batcher(score, max_requests=3)
    batcher.start()
    first = batcher.submit(b"first")
    assert busy.wait(10)
    waiting = [batcher.submit(body) for body in (b"a", b"bad", b"c", b"d")]  # arrive while the model is busy
    release.set()
    assert first.result(10) == {"body": "first"}
    assert [f.result(10) for f in (waiting[0], waiting[2], waiting[3])] == [{"body": b} for b in ("a", "c", "d")]
    with pytest.raises(ValueError, match="bad input"):  # one request's failure is its own
        waiting[1].result(10)
    batcher.close(10)
    assert batches == [[b"first"], [b"a", b"bad", b"c"], [b"d"]]  # at most max_requests per batch
    assert not batcher.running


def test_a_failing_batch_fails_each_of_its_requests_and_the_thread_keeps_going() -> None:
    calls = 0

    def score(arrivals: list[Arrival]) -> list[dict[str, Any] | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return [{"ok": True} for _ in arrivals]

    batcher = Batcher(score, max_requests=8)
    batcher.start()
    with pytest.raises(RuntimeError, match="a bug"):
        batcher.submit(b"x").result(10)
    assert batcher.submit(b"y").result(10) == {"ok": True}
    batcher.close(10)
