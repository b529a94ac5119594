"""Micro-batching of /predict: one scoring thread takes every request that arrived while it was busy and scores
them together. The model call costs about the same for 1 row as for 100, so a busy server answers many more
requests per second; an idle one scores a request at once (no timer)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crispflow.serving.models import LoadedModel

log = logging.getLogger("crispflow.serving")

Arrival = tuple[bytes, float, datetime]  # a /predict body, perf_counter() and wall time at its arrival


def request_ids(n: int) -> list[str]:
    """`n` random (version 4) UUID strings, as `str(uuid.uuid4())` makes them, from one `os.urandom` call."""
    raw = bytearray(os.urandom(16 * n))
    for k in range(6, 16 * n, 16):
        raw[k] = (raw[k] & 0x0F) | 0x40  # version 4
        raw[k + 2] = (raw[k + 2] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return [f"{h[o:o + 8]}-{h[o + 8:o + 12]}-{h[o + 12:o + 16]}-{h[o + 16:o + 20]}-{h[o + 20:o + 32]}"
            for o in range(0, 32 * n, 32)]


@dataclass(slots=True)
class PreparedRequest:
    """One parsed, validated /predict request waiting for its outputs (filled in by `score_parts`)."""

    slot: int
    records: list[dict[str, Any]]
    ids: list[str]
    entities: list[str | None]
    chosen: list[str]  # arm per record
    groups: dict[str, list[int]]  # arm → record indexes
    allowed: tuple[str, ...]
    start: float
    ts: datetime
    scores: list[Any]  # per record: the model's output (see `LoadedModel.rows`)


def score_parts(model: LoadedModel, parts: list[tuple[PreparedRequest, list[int]]]) -> None:
    """One model call over the given records of several requests; each record's output (a float, or the class
    probabilities of a multiclass model) written back to its request."""
    if len(parts) == 1 and len(parts[0][1]) == len(parts[0][0].records):
        records = parts[0][0].records
    else:
        records = [p.records[i] for p, index in parts for i in index]
    import numpy as np

    out = model.output(model.schema.frame(records))
    if len(out) != len(records):
        raise ValueError(f"the model returned {len(out)} outputs for {len(records)} records")
    if not np.isfinite(out).all():
        raise ValueError("the model returned a non-finite output")
    values = out.tolist()
    position = 0
    for p, index in parts:
        for i in index:
            p.scores[i] = values[position]
            position += 1


class QueueFull(Exception):
    """The scoring queue holds its most requests: refuse (503 with Retry-After) instead of growing memory."""


class Batcher:
    """Requests queue while the model is busy, and the scoring thread takes all that arrived meanwhile (at most
    `max_requests`) as one batch for `score`, which returns one response or exception per request, in order.
    At most `max_queue` requests wait: `submit` raises QueueFull beyond it."""

    def __init__(self, score: Callable[[list[Arrival]], list[dict[str, Any] | Exception]], max_requests: int,
                 max_queue: int = 1024) -> None:
        self._score = score
        self._max = max_requests
        self._max_queue = max_queue
        self._waiting = 0  # queued, not yet taken by the scoring thread
        self._count_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Arrival, Future[dict[str, Any]]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="crispflow-scoring", daemon=True)
        self.running = False

    def start(self) -> None:
        if not self.running and not self._thread.is_alive():
            self.running = True
            self._thread.start()

    def submit(self, body: bytes) -> Future[dict[str, Any]]:
        """Queue one request; the future holds its response or raises its exception."""
        with self._count_lock:
            if self._waiting >= self._max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting to be scored (the limit is {self._max_queue})")
            self._waiting += 1
        future: Future[dict[str, Any]] = Future()
        self._queue.put(((body, time.perf_counter(), datetime.now(UTC)), future))
        return future

    def _taken(self, n: int) -> None:
        with self._count_lock:
            self._waiting -= n

    def close(self, timeout: float) -> None:
        """Score what is queued, then stop."""
        self.running = False  # later requests are scored in the threadpool
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._taken(len(batch))
            try:
                outcomes = self._score([arrival for arrival, _ in batch])
            except Exception as exc:  # a bug, not bad input: every request of the batch gets a 500
                log.exception("scoring a batch of %d requests failed", len(batch))
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.set_running_or_notify_cancel():
                    continue  # the client went away
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
